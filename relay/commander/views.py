"""Read models: a run as the API (and the dashboard) shows it, built from the store and live leases.

Nothing here decides or writes anything.  A summary joins the run row with its live lease in
memory (holder, expiry, renew age); the detail adds the recent events, the metrics history, the
lease history (one entry per epoch), the masked spec and the callback delivery state; a log page
is the run's log timeline after a cursor, each line with the pod and epoch that printed it.
"""

from __future__ import annotations

from relay.commander.callbacks import CallbackDispatcher
from relay.commander.errors import RunNotFoundError
from relay.commander.jobs import spec_of
from relay.commander.leases import LeaseManager
from relay.commander.store import LeaseRow, RunRow
from relay.schema import (
    EventRecord,
    LeaseEnd,
    LeaseRecord,
    LogRecord,
    LogsResponse,
    MetricsPoint,
    RunDetail,
    RunSummary,
)


class RunViews:
    """The API's read models over one lease manager (and its callbacks, for their delivery state)."""

    def __init__(self, leases: LeaseManager, callbacks: CallbackDispatcher | None = None) -> None:
        self.leases = leases
        self.store = leases.store
        self.callbacks = callbacks

    def summary(self, row: RunRow) -> RunSummary:
        """A run as the API shows it, with its live lease's holder, expiry and renew age."""
        lease = self.leases.live_lease(row.run_id)
        now_mono, now_wall = self.leases.monotonic(), self.leases.wall()
        if lease is not None and now_mono >= lease.expires_at:
            lease = None  # expired, the sweeper has not ended it yet: nobody holds the run
        last_renew = lease.last_renew_at if lease is not None else None
        return RunSummary(
            run_id=row.run_id,
            status=row.status,
            mode=row.mode,  # type: ignore[arg-type]
            epoch=row.epoch,
            holder=lease.worker_id if lease is not None else None,
            lease_expires_at=now_wall + (lease.expires_at - now_mono) if lease is not None else None,
            last_renew_at=last_renew,
            last_renew_age_s=max(0.0, now_wall - last_renew) if last_renew is not None else None,
            step=row.step,
            latest_checkpoint=row.latest_checkpoint,
            remote_step=row.remote_step,
            cancel_requested=row.cancel_requested,
            detail=row.detail,
            created_at=row.created_at,
            updated_at=row.updated_at,
            priority=row.priority,
            restarts=row.restarts,
            max_restarts=row.max_restarts,
        )

    def summaries(self) -> list[RunSummary]:
        return [self.summary(row) for row in self.store.list_runs()]

    def detail(self, run_id: str, *, events: int = 50, metrics: int = 200, leases: int = 100) -> RunDetail:
        """One run with its last ``events`` events, ``metrics`` metrics points and ``leases`` leases."""
        row = self._run(run_id)
        spec = spec_of(row)
        detail = RunDetail(
            **self.summary(row).model_dump(),
            events=[
                EventRecord(ts=e.ts, epoch=e.epoch, name=e.name, worker_id=e.worker_id, message=e.message)
                for e in self.store.recent_events(run_id, events)
            ],
            metrics_history=[
                MetricsPoint(ts=m.ts, step=m.step, epoch=m.epoch, metrics=m.metrics)
                for m in self.store.metrics_history(run_id, metrics)
            ],
            leases=self.lease_history(run_id, leases),
            spec=spec.masked() if spec is not None else None,
        )
        if self.callbacks is not None and spec is not None and spec.callbacks is not None:
            detail.callbacks = self.callbacks.status(row)
        return detail

    def lease_history(self, run_id: str, limit: int = 100) -> list[LeaseRecord]:
        """The run's last ``limit`` leases, oldest epoch first: who, when, how each ended, its steps."""
        return [_lease_record(lease) for lease in self.store.lease_history(run_id, limit)]

    def log_page(self, run_id: str, *, after: int, limit: int, tail: int = 0) -> LogsResponse:
        """Log lines after the cursor ``after`` (at most ``limit``; only the last ``tail`` when tail > 0)."""
        row = self._run(run_id)
        more = False
        if tail > 0:
            lines = [line for line in self.store.log_tail(run_id, tail) if line.id > after]
        else:
            lines = self.store.log_lines(run_id, after, limit + 1)
            lines, more = lines[:limit], len(lines) > limit
        return LogsResponse(
            run_id=run_id,
            status=row.status,
            lines=[
                LogRecord.model_construct(
                    ts=line.ts, stream=line.stream, line=line.line, worker_id=line.worker_id, epoch=line.epoch
                )
                for line in lines
            ],
            next_cursor=lines[-1].id if lines else after,
            more=more,
        )

    def _run(self, run_id: str) -> RunRow:
        row = self.store.get_run(run_id)
        if row is None:
            raise RunNotFoundError(f"no run {run_id}")
        return row


def _lease_record(lease: LeaseRow) -> LeaseRecord:
    return LeaseRecord(
        epoch=lease.epoch,
        worker_id=lease.worker_id,
        granted_at=lease.granted_at,
        ended_at=lease.ended_at,
        ended=LeaseEnd(lease.ended) if lease.ended is not None else LeaseEnd.running,
        first_step=lease.first_step,
        last_step=lease.last_step,
        fenced_at=lease.fenced_at,
    )
