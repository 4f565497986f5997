"""Who may train which run: acquire, renew, release, report, expiry, and the epoch fencing token.

The :class:`LeaseManager` applies the rules and records what they decide:

* acquire follows the acquire table and renew, release and report the one fencing check, both in
  ``relay.commander.lease_rules``.  Every grant increments the run's ``epoch``; the epoch and a
  fresh random ``lease_id`` are what the holder must present afterwards.  An expired lease is
  dead, as in etcd: it cannot be renewed, even if nobody took the run yet.  When a refused caller
  held the lease of that epoch and it ended, the epoch gets one ``fenced`` event.
* Status changes go through ``runs.transition`` (the one table of transitions).
* A submitted run (``relay.commander.jobs``) is granted with what it has left of ``max_restarts``
  and ``max_duration_s``; a failed release with both left sends it back to the queue and counts
  the restart, as does every ``trainer_restarted`` a worker reports.  Each change of such a run
  queues its callbacks (``callback_outbox``) in the same transaction.
* Every lease leaves a row in the run's lease history (one per epoch: holder, grant, end, steps),
  written in the transaction of the change that opens, moves or ends it.

Lease deadlines live only in memory (``relay.commander.live_leases``), so a renewal never touches the
disk; grants, releases and expiries are durable (``save_run(durable=True)``), committed before the
HTTP layer answers.  Running time (``max_duration_s``) is counted on the monotonic clock.

All methods are synchronous and are called from the event loop's thread, so each one runs to
completion before another starts: check-then-grant is atomic.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.commander import runs
from relay.commander.errors import (
    EpochExhaustedError,
    LeaseHeldError,
    ModeMismatchError,
    NoWaitingRunError,
    RunClosedError,
    RunNotFoundError,
    StaleLeaseError,
)
from relay.commander.fencing import FencingChecks
from relay.commander.jobs import granted_spec, may_restart
from relay.commander.lease_rules import (
    Decision,
    Holder,
    LeaseWatch,
    LiveLease,
    decide_acquire,
    epoch_exhausted,
    held_message,
    next_epoch,
)
from relay.commander.live_leases import LiveLeases
from relay.commander.lost_state import LostState
from relay.commander.stats import Stats
from relay.commander.store import (
    LeaseEnded,
    LeaseGranted,
    LeaseProgress,
    LogRow,
    MetricsRow,
    NewDelivery,
    NewEvent,
    RunRow,
    Store,
)
from relay.schema import (
    AcquireRequest,
    CallbackEvent,
    EventName,
    ReleaseOutcome,
    ReleaseRequest,
    RenewRequest,
    ReportRequest,
    RunSpec,
    RunStatus,
)

log = logging.getLogger("relay.commander")


@dataclass
class Grant:
    run: RunRow
    lease: LiveLease
    spec: RunSpec | None


#: Builds the callbacks to queue for a change of a submitted run: (run after it, event, metrics or None).
#: Their rows are written in the same transaction as the change (see ``relay.commander.callbacks``).
CallbackOutbox = Callable[[RunRow, CallbackEvent, "dict[str, float] | None"], list[NewDelivery]]


@dataclass
class LeaseManager(FencingChecks):
    """The commander's rules over a :class:`Store`; call :meth:`load` once before use."""

    store: Store
    ttl_s: float = 60.0
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    stats: Stats = field(default_factory=Stats)
    callback_outbox: CallbackOutbox | None = None
    #: told of every new live lease and every run change that may wake a long-polled acquire
    watch: LeaseWatch | None = None

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError("lease ttl must be positive")
        self._live = LiveLeases(self.ttl_s, lambda: self.monotonic())  # the clock may be swapped (tests)
        lost = bool(getattr(self.store, "lost_state", False))
        self.lost = LostState(self.ttl_s, lambda: self.monotonic(), lost_at_start=lost)
        self._same_id_warned: dict[str, int] = {}  # run_id -> epoch whose duplicate worker id was logged

    @property
    def renew_interval_s(self) -> float:
        """How often a holder should renew: three chances before its lease expires."""
        return self.ttl_s / 3.0

    def load(self) -> int:
        """Rebuild the live leases from the store, each with a full TTL; returns how many."""
        count = self._live.rebuild(self.store.held_leases())
        if self.watch is not None:
            self.watch.leases_reloaded(list(self._live))
        return count

    def resync(self) -> None:
        """After a failed commit: memory follows the disk, and no lease gains time (``LiveLeases.resync``)."""
        self._live.resync(self.store.held_leases())
        if self.watch is not None:
            self.watch.leases_reloaded(list(self._live))

    def held_count(self) -> int:
        """How many leases are live in memory (expired ones the sweeper has not ended yet included)."""
        return len(self._live)

    def live_lease(self, run_id: str) -> LiveLease | None:
        """The in-memory lease of ``run_id`` (views, tests and metrics read it; never mutate it)."""
        return self._live.get(run_id)

    # ------------------------------------------------------------------ acquire

    def acquire(self, req: AcquireRequest) -> Grant:
        """Grant a lease per ``lease_rules.ACQUIRE_RULES``, creating the run when ``run_id`` is new."""
        row = self._run_to_acquire(req)
        lease = self._live.get(row.run_id)
        decision, holder = decide_acquire(runs.is_closed(row.status), lease, req.worker_id, req.held_lease)
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
            message = held_message(row.run_id, lease, holder, retry_after)
            if holder is Holder.same_worker and self._same_id_warned.get(row.run_id) != lease.epoch:
                self._same_id_warned[row.run_id] = lease.epoch  # once per lease, not on every retry
                log.warning("%s", message)
            raise LeaseHeldError(
                message,
                holder=lease.worker_id,
                retry_after_s=round(min(retry_after, self.ttl_s), 3),
                status=row.status,
            )
        exhausted = epoch_exhausted(row)
        if exhausted is not None:
            self.stats.denials += 1
            raise EpochExhaustedError(exhausted, status=row.status)
        wait = self.lost.wait_s(row.run_id)
        if wait > 0:  # leases the state does not know may still be held: they end within a TTL of start
            self.stats.denials += 1
            why = f"run {row.run_id} is not granted for {wait:.1f}s more: {self.lost.reason(row.run_id)}"
            raise LeaseHeldError(why, holder=None, retry_after_s=round(wait, 3), status=row.status)
        return self._grant(row, req, replacing=lease if holder is Holder.same_worker_proven else None)

    def _run_to_acquire(self, req: AcquireRequest) -> RunRow:
        """The run the acquire asks for (its lease ended first when due), or a new pending one."""
        if req.run_id is None:
            self.expire_due()
            row = self.store.oldest_waiting(runs.WAITING_STATUSES, req.mode)
            if row is None:
                wanted = f" for mode {req.mode}" if req.mode else ""
                raise NoWaitingRunError(f"no run is waiting for a worker{wanted}")
            return row
        self.expire_if_due(req.run_id)
        row = self.store.get_run(req.run_id)
        if row is not None:
            return row
        wall = self.wall()
        return RunRow(
            run_id=req.run_id, status=RunStatus.pending, created_at=wall, updated_at=wall, mode=req.mode
        )

    def _grant(self, row: RunRow, req: AcquireRequest, *, replacing: LiveLease | None) -> Grant:
        wall = self.wall()
        epoch = next_epoch(row)
        message = f"granted to {req.worker_id} at epoch {epoch}"
        if epoch > row.epoch + 1:
            message += f" (past epoch {row.epoch_floor}, which the run's remote holds)"
        if replacing is not None:  # its time counts; its history row is ended as fenced by this grant
            message += (
                f" (its restarted worker showed the lease of epoch {replacing.epoch}; fenced by this one)"
            )
            row.end_lease(wall, replacing.active_s(self.monotonic()))
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
            outbox=self.callbacks_for(row, CallbackEvent.running),
            lease=LeaseGranted(epoch, req.worker_id, row.lease_id, wall),
        )
        now = self.monotonic()
        new = LiveLease(
            run_id=row.run_id,
            lease_id=row.lease_id,
            epoch=epoch,
            worker_id=req.worker_id,
            expires_at=now + self.ttl_s,
            last_renew_at=wall,
            cancel_requested=row.cancel_requested,
            started_at=now,
        )
        if replacing is not None:
            self._live.forget(replacing)
        self._live.put(new)
        if self.watch is not None:
            self.watch.lease_started(new)
        self.stats.grants += 1
        log.info("run %s: %s", row.run_id, message)
        return Grant(run=row, lease=new, spec=granted_spec(row))

    # ------------------------------------------------------------------ renew / release / report

    def renew(self, req: RenewRequest) -> bool:
        """Extend the live lease by a full TTL; returns ``cancel_requested``.  The hot path: memory only."""
        lease = self._current(req.run_id, req)
        if lease is None:
            raise self._stale(req.run_id, req, "renew")
        lease.expires_at = self.monotonic() + self.ttl_s
        lease.last_renew_at = self.wall()
        self.stats.renewals += 1
        return lease.cancel_requested

    def release(self, req: ReleaseRequest) -> RunStatus:
        """End the holder's lease with ``outcome``.  A repeated release of the same lease with the same
        outcome answers the same (the holder retried a release whose answer it lost); with another outcome
        it is a 409 naming the recorded one (the first release decided the run)."""
        lease = self._current(req.run_id, req)
        if lease is None:
            repeated = self._repeated_release(req)
            if repeated is not None:
                return repeated
            raise self._stale(req.run_id, req, "release")
        row = self._must_get(req.run_id)
        wall = self.wall()
        row.apply_progress(wall, req.step, req.checkpoint, req.remote_step)
        row.released_lease_id = row.lease_id
        row.end_lease(wall, lease.active_s(self.monotonic()))
        if (req.remote_epoch or 0) > row.epoch:  # grants jump past it; while a TTL from start, they wait
            row.epoch_floor = max(row.epoch_floor or 0, req.remote_epoch or 0)
            self.lost.behind(req.run_id)
        exhausted = epoch_exhausted(row)
        restart = req.outcome is ReleaseOutcome.failed and req.restartable and may_restart(row)
        cancel = row.cancel_requested  # an exhausted epoch ends the run failed, restarts left or not
        target = runs.status_after_release(
            req.outcome, cancel_requested=cancel, restart_allowed=restart, grantable=not exhausted
        )
        row.status = runs.transition(row.status, target)
        row.released_outcome = req.outcome.value
        row.detail = _joined(exhausted, req.detail) if exhausted else req.detail
        message = f"released as {req.outcome.value}"
        if exhausted is not None and target is RunStatus.failed:
            message += f"; {exhausted}"
            log.error("run %s: %s", req.run_id, exhausted)
        elif target is RunStatus.cancelled and req.outcome is not ReleaseOutcome.cancelled:
            message += ", but a cancel was requested"
        elif restart and target is RunStatus.preempted:
            row.restarts += 1
            self.stats.restarts += 1
            message += f"; restart {row.restarts} of {row.max_restarts}: waiting for the next worker"
        elif target is RunStatus.preempted:
            self.stats.preemptions += 1
        self.store.save_run(
            row,
            [NewEvent(wall, row.epoch, target.value, req.worker_id, _joined(message, req.detail))],
            durable=True,
            outbox=self.callbacks_for(row, CallbackEvent(target.value)),
            lease=LeaseEnded(row.epoch, req.outcome.value, wall, req.step),
        )
        self._live.forget(lease)
        self.run_changed(row)
        self.stats.releases += 1
        log.info("run %s: %s by %s -> %s", req.run_id, message, req.worker_id, target.value)
        return target

    def _repeated_release(self, req: ReleaseRequest) -> RunStatus | None:
        """The status to answer a retried release of an already released lease with, or None when the
        request is not one; a retry asking for another outcome is refused naming the recorded one."""
        row = self.store.get_run(req.run_id)
        if row is None or row.released_lease_id != req.lease_id or row.epoch != req.epoch or row.lease_id:
            return None
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

    def report(self, run_id: str, req: ReportRequest) -> None:
        """Record the holder's progress: step, checkpoint, remote step, metrics, an event, log lines."""
        lease = self._current(run_id, req)
        if lease is None:
            raise self._stale(run_id, req, "report")
        row = self._must_get(run_id)
        wall = self.wall()
        row.apply_progress(wall, req.step, req.checkpoint, req.remote_step)
        row.lease_active_s = lease.active_s(self.monotonic())  # so a commander restart keeps the count
        events = []
        logs = [
            LogRow(line.ts, req.epoch, line.stream, line.line, worker_id=req.worker_id)
            for line in req.log_tail or ()
        ]
        if req.event is not None:
            events.append(NewEvent(wall, req.epoch, req.event.value, req.worker_id, req.message))
        elif req.message:
            logs.append(LogRow(wall, req.epoch, "worker", req.message, worker_id=req.worker_id))
        if req.event is EventName.trainer_restarted:  # counts against the run's max_restarts
            row.restarts += 1
            self.stats.restarts += 1
        outbox: list[NewDelivery] = []
        if req.event is EventName.checkpoint_synced:
            outbox = self.callbacks_for(row, CallbackEvent.checkpoint_synced, req.metrics)
        metrics = MetricsRow(wall, req.step, req.epoch, dict(req.metrics)) if req.metrics else None
        progress = LeaseProgress(req.epoch, req.step, resumed=req.event is EventName.resumed)
        self.store.save_report(row, events, metrics, logs, outbox, lease=progress)

    # ------------------------------------------------------------------ expiry and cancel requests

    def expire_due(self) -> int:
        """End every lease whose holder stopped renewing; returns how many.  Run by the sweeper."""
        now = self.monotonic()
        due = [lease for lease in self._live if now >= lease.expires_at]
        for lease in due:
            self._expire(lease)
        return len(due)

    def expire_if_due(self, run_id: str) -> None:
        """End the run's lease when its holder stopped renewing (before a decision about the run)."""
        lease = self._live.get(run_id)
        if lease is not None and self.monotonic() >= lease.expires_at:
            self._expire(lease)

    def _expire(self, lease: LiveLease) -> None:
        row = self._must_get(lease.run_id)
        wall = self.wall()
        target = runs.status_after_expiry(cancel_requested=row.cancel_requested)
        row.status = runs.transition(row.status, target)
        row.end_lease(wall, lease.active_s(self.monotonic()))
        row.detail = f"lease of {lease.worker_id} expired (no renew for {self.ttl_s:g}s)"
        self.store.save_run(
            row,
            [NewEvent(wall, lease.epoch, EventName.lease_expired.value, lease.worker_id, row.detail)],
            durable=True,
            outbox=self.callbacks_for(row, CallbackEvent(target.value)),
            lease=LeaseEnded(lease.epoch, "expired", wall),
        )
        self._live.forget(lease)
        self.run_changed(row)
        self.stats.expiries += 1
        if target is RunStatus.preempted:
            self.stats.preemptions += 1
        log.warning("run %s: %s -> %s", lease.run_id, row.detail, target.value)

    def run_changed(self, row: RunRow) -> None:
        """A run was released, expired, submitted or cancelled: long-polled acquires waiting for it wake."""
        if self.watch is not None:
            self.watch.run_changed(row)

    def request_cancel(self, run_id: str) -> None:
        """Flag the run's live lease, so its holder learns of the cancel on its next renew."""
        lease = self._live.get(run_id)
        if lease is not None:
            lease.cancel_requested = True

    # ------------------------------------------------------------------ helpers

    def callbacks_for(
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


def _joined(message: str, detail: str | None) -> str:
    return f"{message}. {detail}" if detail else message
