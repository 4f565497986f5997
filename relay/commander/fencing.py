"""The one fencing check of renew, release and report, and what a refused claim teaches the commander.

:class:`FencingChecks` is a part of ``relay.commander.leases.LeaseManager`` (its base class, over the
manager's live leases, store and clocks): :meth:`~FencingChecks._current` passes a claim that names the
run's live lease (``lease_rules.names_lease``) and has not expired; :meth:`~FencingChecks._stale`
builds the 409 for one that does not, records the ``fenced`` event of a holder that lost its lease,
and - when the claim shows an epoch this state never granted, so the state is behind (lost, or
restored from an older copy) - keeps that epoch as the run's floor and holds its grants for the first
TTL (``relay.commander.lost_state``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from relay.commander.errors import StaleLeaseError
from relay.commander.lease_rules import (
    MAX_EPOCH,
    LeaseClaim,
    LiveLease,
    is_fenced_holder,
    names_lease,
    stale_reason,
)
from relay.commander.live_leases import LiveLeases
from relay.commander.lost_state import LostState
from relay.commander.stats import Stats
from relay.commander.store import NewEvent, RunRow, Store
from relay.schema import CLOSED_STATUSES, EventName, RunStatus

log = logging.getLogger("relay.commander")


class FencingChecks:
    """The fencing part of the lease manager (which provides these attributes and ``_expire``)."""

    store: Store
    stats: Stats
    lost: LostState
    _live: LiveLeases
    monotonic: Callable[[], float]
    wall: Callable[[], float]

    def _expire(self, lease: LiveLease) -> None:  # pragma: no cover - the manager's
        raise NotImplementedError

    def _current(self, run_id: str, claim: LeaseClaim) -> LiveLease | None:
        """The fencing rule (``fencing.names_lease``) plus expiry: the run's live lease when ``claim``
        names it and it has not expired, else None.  A lease found expired is ended here."""
        lease = self._live.get(run_id)
        if not names_lease(lease, claim):
            return None
        assert lease is not None
        if self.monotonic() >= lease.expires_at:
            self._expire(lease)
            return None
        return lease

    def _stale(self, run_id: str, claim: LeaseClaim, call: str) -> StaleLeaseError:
        """The 409 for a ``call`` whose claim is not the run's live lease, saying why; when the caller held
        the lease of that epoch and it has ended, the epoch's ``fenced`` event is recorded (once)."""
        self.stats.fenced += 1
        lease = self._live.get(run_id)
        row = self.store.get_run(run_id)
        message = f"lease for run {run_id} is no longer current: {stale_reason(lease, row, claim)}"
        behind = row is None or (claim.epoch > row.epoch and row.status not in CLOSED_STATUSES)
        if behind and claim.epoch <= MAX_EPOCH:
            recorded = 0 if row is None else row.epoch
            message += f" (this state is behind: it recorded epoch {recorded}; the next grant goes past {claim.epoch})"
            self._state_behind(run_id, row, claim, f"{call} refused: {message}")
        elif is_fenced_holder(self.store.lease_record(run_id, claim.epoch), claim):
            wall = self.wall()
            event = NewEvent(
                wall, claim.epoch, EventName.fenced.value, claim.worker_id, f"{call} refused: {message}"
            )
            self.store.save_fenced(run_id, event)
            log.info("run %s: the holder of epoch %d is fenced: %s", run_id, claim.epoch, event.message)
        return StaleLeaseError(message)

    def _state_behind(self, run_id: str, row: RunRow | None, claim: LeaseClaim, message: str) -> None:
        """A holder shows an epoch this state never granted (lost, or restored from an older copy): keep
        its epoch as the run's floor, hold the run's grants for the first TTL, record the fencing once."""
        self.lost.behind(run_id)
        if row is not None and (row.epoch_floor or 0) >= claim.epoch:
            return  # learnt already (a fenced holder calls a few times)
        wall = self.wall()
        if row is None:
            row = RunRow(run_id=run_id, status=RunStatus.preempted, created_at=wall, updated_at=wall)
        row.epoch_floor = max(row.epoch_floor or 0, claim.epoch)
        event = NewEvent(wall, claim.epoch, EventName.fenced.value, claim.worker_id, message)
        self.store.save_run(row, [event], durable=True)
        log.warning("run %s: %s", run_id, message)
