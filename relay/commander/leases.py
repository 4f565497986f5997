"""Who may train which run: acquire, renew, release, report, cancel, and the epoch fencing token.

The rules, in one place:

* :data:`ACQUIRE_RULES` decides every acquire from (is the run closed?, who holds
  its lease now?).  Every grant increments the run's ``epoch``; the epoch and a
  fresh random ``lease_id`` are what the holder must present afterwards.
* :meth:`LeaseManager._current` is the fencing rule for renew, release and report:
  the request must name the run's live lease exactly (lease id, epoch, worker) or
  it is refused with :class:`StaleLeaseError` and nothing changes.  An expired
  lease is dead, as in etcd: it cannot be renewed, even if nobody took the run yet.
* Status changes go through ``runs.transition`` (the one table of transitions).
* Submitted runs (:meth:`LeaseManager.submit`) carry a spec: it is handed to the worker in the
  grant with what the run has left of ``max_restarts`` and ``max_duration_s``; a failed release
  with both left sends the run back to the queue (``runs.status_after_release``) and counts the
  restart, as does every ``trainer_restarted`` a worker reports.  Each change of such a run
  queues its callbacks (``callback_outbox``) in the same transaction.

Lease expiry times live only in memory (``LiveLease.expires_at``, monotonic
clock), so a renewal is a dict lookup and never touches the disk.  Grants,
releases, expiries and cancels are written with ``store.save_run(durable=True)``
*before* memory changes (a failed write changes nothing), and the HTTP handler
awaits ``store.committed()`` - the fsync - before it answers.  If a commit fails
after memory changed, the store rolls the batch back and :meth:`LeaseManager.load`
rebuilds memory from disk.  On start-up every lease that the store says is held
gets a full TTL, so its holder can renew after a commander restart and nobody
else is granted the run meanwhile.

All methods are synchronous and are called from the event loop's thread, so each
one runs to completion before another starts: check-then-grant is atomic.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from relay.commander import runs
from relay.commander.store import LogRow, MetricsRow, NewDelivery, NewEvent, RunRow, Store
from relay.schema import (
    AcquireRequest,
    CallbackEvent,
    CheckpointRef,
    EventName,
    EventRecord,
    MetricsPoint,
    ReleaseOutcome,
    ReleaseRequest,
    RenewRequest,
    ReportRequest,
    RunDetail,
    RunSpec,
    RunStatus,
    RunSummary,
)

log = logging.getLogger("relay.commander")

# --------------------------------------------------------------------------- errors


class RuleError(Exception):
    """A request the rules refuse; ``app.py`` turns it into an HTTP answer."""

    http_status = 409
    code = "conflict"
    field: str | None = None

    def __init__(self, message: str, *, status: RunStatus | None = None, detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class StaleLeaseError(RuleError):
    """The lease in the request is not the run's live lease (released, expired, re-granted)."""

    code = "stale_lease"


class LeaseHeldError(RuleError):
    """Another worker holds a live lease on the run."""

    code = "lease_held"

    def __init__(self, message: str, *, holder: str, retry_after_s: float, status: RunStatus) -> None:
        super().__init__(message, status=status)
        self.holder = holder
        self.retry_after_s = retry_after_s


class RunClosedError(RuleError):
    """The run is completed or cancelled: never granted again."""

    code = "run_closed"


class NoWaitingRunError(RuleError):
    http_status = 404
    code = "no_waiting_run"


class RunNotFoundError(RuleError):
    http_status = 404
    code = "not_found"


class ModeMismatchError(RuleError):
    http_status = 422
    code = "mode_mismatch"
    field = "mode"


class SpecConflictError(RuleError):
    """A submit for an existing run id with a different spec (or for a run that was not submitted)."""

    code = "spec_conflict"
    field = "run_id"


# --------------------------------------------------------------------------- the acquire table


class Holder(Enum):
    """Who holds a run's lease at the moment of an acquire (expired leases are ended first)."""

    nobody = "nobody"
    same_worker = "same_worker"
    other_worker = "other_worker"


class Decision(Enum):
    grant = "grant"
    deny_held = "deny_held"
    deny_closed = "deny_closed"


#: (run is closed, current holder) -> decision.  "same_worker" is a worker that
#: restarted and asks again: it is granted with a new epoch, which fences off
#: whatever its previous incarnation still does.
ACQUIRE_RULES: dict[tuple[bool, Holder], Decision] = {
    (False, Holder.nobody): Decision.grant,
    (False, Holder.same_worker): Decision.grant,
    (False, Holder.other_worker): Decision.deny_held,
    (True, Holder.nobody): Decision.deny_closed,
    (True, Holder.same_worker): Decision.deny_closed,
    (True, Holder.other_worker): Decision.deny_closed,
}


@dataclass(slots=True)
class LiveLease:
    """A held lease as the commander keeps it in memory."""

    run_id: str
    lease_id: str
    epoch: int
    worker_id: str
    expires_at: float  # monotonic clock
    last_renew_at: float | None  # wall clock, None after a commander restart until the next renew
    cancel_requested: bool = False


@dataclass
class Stats:
    """Counters for the commander's metrics (issue 8 exports them)."""

    grants: int = 0
    renewals: int = 0
    releases: int = 0
    expiries: int = 0
    fenced: int = 0
    denials: int = 0
    submits: int = 0
    preemptions: int = 0  # runs handed back for the next worker: preempted releases and expired leases
    restarts: int = 0  # trainer restarts reported by workers plus failed runs the commander queued again


@dataclass
class Grant:
    run: RunRow
    lease: LiveLease
    spec: RunSpec | None


#: Called after every durable status change with (run after the change, status before it or None when new).
StatusListener = Callable[[RunRow, RunStatus | None], None]

#: Builds the callbacks to queue for a change of a submitted run: (run after it, event, metrics or None).
#: Their rows are written in the same transaction as the change (see ``relay.commander.callbacks``).
CallbackOutbox = Callable[[RunRow, CallbackEvent, "dict[str, float] | None"], list[NewDelivery]]


def new_run_id(wall: float) -> str:
    """A run id for a spec submitted without one: sortable by time, unique by its random suffix."""
    return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(wall))}-{secrets.token_hex(3)}"


@dataclass
class LeaseManager:
    """The commander's rules over a :class:`Store`; call :meth:`load` once before use."""

    store: Store
    ttl_s: float = 60.0
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    stats: Stats = field(default_factory=Stats)
    status_listeners: list[StatusListener] = field(default_factory=list)
    callback_outbox: CallbackOutbox | None = None

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError("lease ttl must be positive")
        self._live: dict[str, LiveLease] = {}

    @property
    def renew_interval_s(self) -> float:
        """How often a holder should renew: three chances before its lease expires."""
        return self.ttl_s / 3.0

    def load(self) -> int:
        """Rebuild the live leases from the store, each with a full TTL; returns how many."""
        expires = self.monotonic() + self.ttl_s
        self._live = {
            row.run_id: LiveLease(
                run_id=row.run_id,
                lease_id=row.lease_id or "",
                epoch=row.epoch,
                worker_id=row.lease_worker or "",
                expires_at=expires,
                last_renew_at=None,
                cancel_requested=row.cancel_requested,
            )
            for row in self.store.held_leases()
        }
        return len(self._live)

    # ------------------------------------------------------------------ submit

    def submit(self, spec: RunSpec) -> tuple[RunRow, bool]:
        """Register a submitted run as pending; returns (run, created).

        The same spec again is answered with the run as it is now (created False), so a
        backend may retry a submit whose answer it lost; a different spec for the same
        run id, or a spec for a run a worker started by id, is a SpecConflictError.
        """
        wall = self.wall()
        if spec.run_id is None:
            spec = spec.model_copy(update={"run_id": new_run_id(wall)})
        run_id = spec.run_id
        assert run_id is not None
        row = self.store.get_run(run_id)
        if row is not None:
            if row.spec_json is None:
                raise SpecConflictError(
                    f"run {run_id} already exists and was not submitted (a worker started it by id); "
                    "submit under another run_id",
                    status=row.status,
                )
            stored = RunSpec.model_validate_json(row.spec_json).model_dump(mode="json")
            wanted = spec.model_dump(mode="json")
            if stored == wanted:
                return row, False
            differs = sorted(key for key in wanted if stored.get(key) != wanted.get(key))
            raise SpecConflictError(
                f"run {run_id} was submitted with a different spec (differs in: {', '.join(differs)}); "
                "submit the same spec, or use another run_id",
                status=row.status,
                detail={"differs": differs},
            )
        row = RunRow(
            run_id=run_id,
            status=RunStatus.pending,
            created_at=wall,
            updated_at=wall,
            mode=spec.mode,
            priority=spec.priority,
            max_restarts=spec.max_restarts,
            spec_json=spec.model_dump_json(),
        )
        message = f"submitted: mode {spec.mode}, priority {spec.priority}, max_restarts {spec.max_restarts}"
        self.store.save_run(
            row,
            [NewEvent(wall, 0, EventName.submitted.value, None, message)],
            durable=True,
            outbox=self._callbacks(row, CallbackEvent.pending),
        )
        self.stats.submits += 1
        log.info("run %s: %s", run_id, message)
        self._notify(row, None)
        return row, True

    # ------------------------------------------------------------------ acquire

    def acquire(self, req: AcquireRequest) -> Grant:
        """Grant a lease per :data:`ACQUIRE_RULES`, creating the run when ``run_id`` is new."""
        wall = self.wall()
        created = False
        if req.run_id is None:
            self.expire_due()
            row = self.store.oldest_waiting(runs.WAITING_STATUSES, req.mode)
            if row is None:
                wanted = f" for mode {req.mode}" if req.mode else ""
                raise NoWaitingRunError(f"no run is waiting for a worker{wanted}")
        else:
            self._expire_if_due(req.run_id)
            row = self.store.get_run(req.run_id)
            if row is None:
                created = True
                row = RunRow(
                    run_id=req.run_id,
                    status=RunStatus.pending,
                    created_at=wall,
                    updated_at=wall,
                    mode=req.mode,
                )
        lease = self._live.get(row.run_id)
        if lease is None:
            holder = Holder.nobody
        elif lease.worker_id == req.worker_id:
            holder = Holder.same_worker
        else:
            holder = Holder.other_worker
        decision = ACQUIRE_RULES[(runs.is_closed(row.status), holder)]

        if decision is Decision.deny_closed:
            self.stats.denials += 1
            raise RunClosedError(
                f"run {row.run_id} is {row.status.value} and is never granted again", status=row.status
            )
        if req.mode is not None and row.mode is not None and req.mode != row.mode:
            raise ModeMismatchError(
                f"run {row.run_id} is a {row.mode} run; this worker asked for mode {req.mode}",
                status=row.status,
            )

        if decision is Decision.deny_held:
            assert lease is not None
            self.stats.denials += 1
            retry_after = max(0.0, lease.expires_at - self.monotonic())
            raise LeaseHeldError(
                f"run {row.run_id} is held by worker {lease.worker_id} (epoch {lease.epoch}); "
                f"its lease expires in {retry_after:.1f}s unless renewed",
                holder=lease.worker_id,
                retry_after_s=round(min(retry_after, self.ttl_s), 3),
                status=row.status,
            )

        previous = None if created else row.status
        epoch = row.epoch + 1
        message = f"granted to {req.worker_id} at epoch {epoch}"
        if holder is Holder.same_worker:
            message += f" (replacing the same worker's lease of epoch {row.epoch})"
        row.status = runs.transition(row.status, RunStatus.running)
        row.epoch = epoch
        row.lease_id = secrets.token_hex(16)
        row.lease_worker = req.worker_id
        row.lease_granted_at = wall
        row.released_lease_id = row.released_outcome = None
        row.updated_at = wall
        if row.mode is None:
            row.mode = req.mode
        self.store.save_run(
            row,
            [NewEvent(wall, epoch, EventName.acquired.value, req.worker_id, message)],
            durable=True,
            outbox=self._callbacks(row, CallbackEvent.running),
        )
        new = LiveLease(
            run_id=row.run_id,
            lease_id=row.lease_id,
            epoch=epoch,
            worker_id=req.worker_id,
            expires_at=self.monotonic() + self.ttl_s,
            last_renew_at=wall,
            cancel_requested=row.cancel_requested,
        )
        self._live[row.run_id] = new
        self.stats.grants += 1
        log.info("run %s: %s", row.run_id, message)
        self._notify(row, previous)
        return Grant(run=row, lease=new, spec=self._granted_spec(row))

    def _granted_spec(self, row: RunRow) -> RunSpec | None:
        """The spec a worker gets: the restarts and running time the run has left, the auth header masked."""
        spec = _spec(row)
        if spec is None:
            return None
        update: dict[str, object] = {"max_restarts": max(0, spec.max_restarts - row.restarts)}
        if spec.max_duration_s is not None:
            update["max_duration_s"] = max(1.0, spec.max_duration_s - row.active_s)
        return spec.model_copy(update=update).masked()

    # ------------------------------------------------------------------ renew / release / report

    def renew(self, req: RenewRequest) -> bool:
        """Extend the live lease by a full TTL; returns ``cancel_requested``.  The hot path: memory only."""
        lease = self._live.get(req.run_id)
        if (
            lease is None
            or lease.lease_id != req.lease_id
            or lease.epoch != req.epoch
            or lease.worker_id != req.worker_id
        ):
            raise self._stale(req.run_id, req.worker_id, req.epoch, lease)
        now = self.monotonic()
        if now >= lease.expires_at:
            self._expire(lease)
            raise self._stale(req.run_id, req.worker_id, req.epoch, None)
        lease.expires_at = now + self.ttl_s
        lease.last_renew_at = self.wall()
        self.stats.renewals += 1
        return lease.cancel_requested

    def release(self, req: ReleaseRequest) -> RunStatus:
        """End the holder's lease with ``outcome``.  A repeated release of the same lease with the same
        outcome answers the same (the holder retried a release whose answer it lost); with a different
        outcome it is a 409 naming the recorded one: the first release decided the run, and answering 200
        would tell the worker its second outcome was recorded when it was not."""
        lease = self._live.get(req.run_id)
        if not self._is_current(lease, req.lease_id, req.epoch, req.worker_id):
            row = self.store.get_run(req.run_id)
            if (
                row is not None
                and row.released_lease_id == req.lease_id
                and row.epoch == req.epoch
                and row.lease_id is None
            ):
                recorded = row.released_outcome
                if recorded is None or recorded == req.outcome.value:  # None: released by an older commander
                    return row.status
                self.stats.fenced += 1
                raise StaleLeaseError(
                    f"lease for run {req.run_id} was already released as {recorded} "
                    f"(the run is {row.status.value}); a second release as {req.outcome.value} is refused",
                    status=row.status,
                    detail={"recorded_outcome": recorded},
                )
            raise self._stale(req.run_id, req.worker_id, req.epoch, lease)
        assert lease is not None
        if self.monotonic() >= lease.expires_at:
            self._expire(lease)
            raise self._stale(req.run_id, req.worker_id, req.epoch, None)
        row = self._must_get(req.run_id)
        previous = row.status
        wall = self.wall()
        _apply_progress(row, wall, req.step, req.checkpoint, req.remote_step)
        _end_lease_time(row, wall)
        restart = req.outcome is ReleaseOutcome.failed and req.restartable and self._may_restart(row)
        target = runs.status_after_release(
            req.outcome, cancel_requested=row.cancel_requested, restart_allowed=restart
        )
        row.status = runs.transition(row.status, target)
        row.released_lease_id = row.lease_id
        row.released_outcome = req.outcome.value
        row.lease_id = row.lease_worker = row.lease_granted_at = None
        row.detail = req.detail
        row.updated_at = wall
        message = req.detail or ""
        if target is RunStatus.cancelled and req.outcome is not ReleaseOutcome.cancelled:
            message = f"released as {req.outcome.value}, but a cancel was requested. {message}".strip()
        elif restart and target is RunStatus.preempted:
            row.restarts += 1
            self.stats.restarts += 1
            message = (
                f"released as failed; restart {row.restarts} of {row.max_restarts}: "
                f"waiting for the next worker. {message}"
            ).strip()
        elif target is RunStatus.preempted:
            self.stats.preemptions += 1
        self.store.save_run(
            row,
            [NewEvent(wall, row.epoch, target.value, req.worker_id, message or None)],
            durable=True,
            outbox=self._callbacks(row, CallbackEvent(target.value)),
        )
        del self._live[req.run_id]
        self.stats.releases += 1
        log.info(
            "run %s: released by %s as %s -> %s", req.run_id, req.worker_id, req.outcome.value, target.value
        )
        self._notify(row, previous)
        return target

    def report(self, run_id: str, req: ReportRequest) -> None:
        """Record the holder's progress: step, checkpoint, remote step, metrics, an event, log lines."""
        lease = self._live.get(run_id)
        if not self._is_current(lease, req.lease_id, req.epoch, req.worker_id):
            raise self._stale(run_id, req.worker_id, req.epoch, lease)
        assert lease is not None
        if self.monotonic() >= lease.expires_at:
            self._expire(lease)
            raise self._stale(run_id, req.worker_id, req.epoch, None)
        row = self._must_get(run_id)
        wall = self.wall()
        _apply_progress(row, wall, req.step, req.checkpoint, req.remote_step)
        events = []
        logs = [LogRow(line.ts, req.epoch, line.stream, line.line) for line in req.log_tail or ()]
        if req.event is not None:
            events.append(NewEvent(wall, req.epoch, req.event.value, req.worker_id, req.message))
        elif req.message:
            logs.append(LogRow(wall, req.epoch, "worker", req.message))
        if req.event is EventName.trainer_restarted:  # counts against the run's max_restarts
            row.restarts += 1
            self.stats.restarts += 1
        outbox: list[NewDelivery] = []
        if req.event is EventName.checkpoint_synced:
            outbox = self._callbacks(row, CallbackEvent.checkpoint_synced, req.metrics)
        metrics = MetricsRow(wall, req.step, req.epoch, dict(req.metrics)) if req.metrics else None
        self.store.save_report(row, events, metrics, logs, outbox)

    # ------------------------------------------------------------------ cancel / expiry

    def cancel(self, run_id: str) -> RunRow:
        """Cancel a waiting run now, or flag a running one so its holder learns it on its next renew."""
        self._expire_if_due(run_id)
        row = self.store.get_run(run_id)
        if row is None:
            raise RunNotFoundError(f"no run {run_id}")
        if row.status is RunStatus.cancelled:
            return row
        if row.status is RunStatus.completed:
            raise RunClosedError(f"run {run_id} is already completed", status=row.status)
        if row.cancel_requested:
            return row
        previous = row.status
        wall = self.wall()
        target = runs.status_after_cancel(row.status)
        row.cancel_requested = True
        row.updated_at = wall
        if target is None:
            name, message = EventName.cancel_requested.value, "the holder stops at its next renew"
        else:
            row.status = target
            name, message = EventName.cancelled.value, f"cancelled while {previous.value}"
        outbox = self._callbacks(row, CallbackEvent.cancelled) if target is not None else []
        self.store.save_run(
            row, [NewEvent(wall, row.epoch, name, None, message)], durable=True, outbox=outbox
        )
        lease = self._live.get(run_id)
        if lease is not None:
            lease.cancel_requested = True
        log.info("run %s: %s", run_id, message)
        if target is not None:
            self._notify(row, previous)
        return row

    def expire_due(self) -> int:
        """End every lease whose holder stopped renewing; returns how many.  Run by the sweeper."""
        now = self.monotonic()
        due = [lease for lease in self._live.values() if now >= lease.expires_at]
        for lease in due:
            self._expire(lease)
        return len(due)

    def _expire_if_due(self, run_id: str) -> None:
        lease = self._live.get(run_id)
        if lease is not None and self.monotonic() >= lease.expires_at:
            self._expire(lease)

    def _expire(self, lease: LiveLease) -> None:
        row = self._must_get(lease.run_id)
        previous = row.status
        wall = self.wall()
        target = runs.status_after_expiry(cancel_requested=row.cancel_requested)
        row.status = runs.transition(row.status, target)
        _end_lease_time(row, wall)
        row.lease_id = row.lease_worker = row.lease_granted_at = None
        row.updated_at = wall
        row.detail = f"lease of {lease.worker_id} expired (no renew for {self.ttl_s:g}s)"
        self.store.save_run(
            row,
            [NewEvent(wall, lease.epoch, EventName.lease_expired.value, lease.worker_id, row.detail)],
            durable=True,
            outbox=self._callbacks(row, CallbackEvent(target.value)),
        )
        self._live.pop(lease.run_id, None)
        self.stats.expiries += 1
        if target is RunStatus.preempted:
            self.stats.preemptions += 1
        log.warning("run %s: %s -> %s", lease.run_id, row.detail, target.value)
        self._notify(row, previous)

    # ------------------------------------------------------------------ views

    def get_detail(self, run_id: str, *, events: int = 50, metrics: int = 200) -> RunDetail:
        row = self.store.get_run(run_id)
        if row is None:
            raise RunNotFoundError(f"no run {run_id}")
        summary = self.summary(row)
        spec = _spec(row)
        return RunDetail(
            **summary.model_dump(),
            events=[
                EventRecord(ts=e.ts, epoch=e.epoch, name=e.name, worker_id=e.worker_id, message=e.message)
                for e in self.store.recent_events(run_id, events)
            ],
            metrics_history=[
                MetricsPoint(ts=m.ts, step=m.step, epoch=m.epoch, metrics=m.metrics)
                for m in self.store.metrics_history(run_id, metrics)
            ],
            spec=spec.masked() if spec is not None else None,
        )

    def list_summaries(self) -> list[RunSummary]:
        return [self.summary(row) for row in self.store.list_runs()]

    def summary(self, row: RunRow) -> RunSummary:
        """A run as the API shows it, with its live lease's holder, expiry and renew age."""
        lease = self._live.get(row.run_id)
        now_mono, now_wall = self.monotonic(), self.wall()
        live = lease is not None and now_mono < lease.expires_at
        last_renew = lease.last_renew_at if live and lease is not None else None
        return RunSummary(
            run_id=row.run_id,
            status=row.status,
            mode=row.mode,  # type: ignore[arg-type]
            epoch=row.epoch,
            holder=lease.worker_id if live and lease is not None else None,
            lease_expires_at=now_wall + (lease.expires_at - now_mono) if live and lease is not None else None,
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

    def held_count(self) -> int:
        """How many leases are live in memory (expired ones the sweeper has not ended yet included)."""
        return len(self._live)

    def log_page(
        self, run_id: str, *, after: int, limit: int, tail: int = 0
    ) -> tuple[RunRow, list[LogRow], bool]:
        """(run, log lines after the cursor ``after``, more follow?): the last ``tail`` of them when tail > 0."""
        row = self.store.get_run(run_id)
        if row is None:
            raise RunNotFoundError(f"no run {run_id}")
        if tail > 0:
            return row, [line for line in self.store.log_tail(run_id, tail) if line.id > after], False
        lines = self.store.log_lines(run_id, after, limit + 1)
        return row, lines[:limit], len(lines) > limit

    def live_lease(self, run_id: str) -> LiveLease | None:
        """The in-memory lease of ``run_id`` (tests and metrics read it; never mutate it)."""
        return self._live.get(run_id)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _is_current(lease: LiveLease | None, lease_id: str, epoch: int, worker_id: str) -> bool:
        return (
            lease is not None
            and lease.lease_id == lease_id
            and lease.epoch == epoch
            and lease.worker_id == worker_id
        )

    def _stale(self, run_id: str, worker_id: str, epoch: int, lease: LiveLease | None) -> StaleLeaseError:
        """Build the 409 for a request that does not hold the run's live lease, saying why."""
        self.stats.fenced += 1
        if lease is not None and lease.worker_id != worker_id:
            why = f"it is held by worker {lease.worker_id} at epoch {lease.epoch}"
        elif lease is not None and lease.epoch != epoch:
            why = f"the current lease has epoch {lease.epoch}, not {epoch}"
        elif lease is not None:
            why = "the lease id does not match the current lease"
        else:
            row = self.store.get_run(run_id)
            if row is None:
                why = "no such run"
            elif row.epoch != epoch:
                why = f"the run is at epoch {row.epoch}, not {epoch}, and nobody holds it now ({row.status.value})"
            else:
                why = f"the lease was released or expired ({row.status.value})"
        return StaleLeaseError(f"lease for run {run_id} is no longer current: {why}")

    def _may_restart(self, row: RunRow) -> bool:
        """A failed submitted run goes back to the queue while it has restarts and running time left."""
        if row.max_restarts is None or row.restarts >= row.max_restarts:
            return False
        spec = _spec(row)
        return spec is None or spec.max_duration_s is None or row.active_s < spec.max_duration_s

    def _callbacks(
        self, row: RunRow, event: CallbackEvent, metrics: dict[str, float] | None = None
    ) -> list[NewDelivery]:
        """The callbacks a change queues (none for a run without callbacks); never fails the change."""
        if self.callback_outbox is None or row.spec_json is None:
            return []
        try:
            return self.callback_outbox(row, event, metrics)
        except Exception:
            log.exception("could not build the callback of run %s", row.run_id)
            return []

    def _must_get(self, run_id: str) -> RunRow:
        row = self.store.get_run(run_id)
        if row is None:  # a live lease without its run row would be a store bug
            raise RunNotFoundError(f"no run {run_id}")
        return row

    def _notify(self, row: RunRow, previous: RunStatus | None) -> None:
        for listener in self.status_listeners:
            try:
                listener(row, previous)
            except Exception:  # a listener (callbacks, metrics) must never break a lease call
                log.exception("status listener failed for run %s", row.run_id)


def _spec(row: RunRow) -> RunSpec | None:
    return RunSpec.model_validate_json(row.spec_json) if row.spec_json else None


def _apply_progress(
    row: RunRow, wall: float, step: int | None, checkpoint: CheckpointRef | None, remote_step: int | None
) -> None:
    """Where the holder says the run stands (a report, or a release's last word)."""
    if step is not None:
        row.step = step
    if checkpoint is not None:
        if row.latest_checkpoint is None or row.latest_checkpoint.step != checkpoint.step:
            row.checkpoint_at = wall
        row.latest_checkpoint = checkpoint
    if remote_step is not None:
        row.remote_step = remote_step
    row.updated_at = wall


def _end_lease_time(row: RunRow, wall: float) -> None:
    """Add the ending lease's time to the run's running time (the max_duration_s budget)."""
    if row.lease_granted_at is not None:
        row.active_s += max(0.0, wall - row.lease_granted_at)
