"""Run control: the two commands a backend or an operator gives a run, submit and cancel.

Both go through the lease manager's store, clock, counters and callback outbox, so a submitted or
cancelled run is recorded like every other change (durably, with its event and its callbacks in
one transaction).  What a spec means is decided in ``relay.commander.jobs``; which status a cancel
sets, in ``relay.commander.runs``.
"""

from __future__ import annotations

import logging

from relay.commander import runs
from relay.commander.errors import RunClosedError, RunNotFoundError
from relay.commander.jobs import check_resubmit, new_run_id, submitted_run
from relay.commander.leases import LeaseManager
from relay.commander.store import NewEvent, RunRow
from relay.schema import CallbackEvent, EventName, RunSpec, RunStatus

log = logging.getLogger("relay.commander")


class RunControl:
    """Submit and cancel, over one lease manager."""

    def __init__(self, leases: LeaseManager) -> None:
        self.leases = leases
        self.store = leases.store

    def submit(self, spec: RunSpec) -> tuple[RunRow, bool]:
        """Register a submitted run as pending; returns (run, created).  The same spec again is answered
        with the run as it is now (created False); a conflicting one is refused (``jobs.check_resubmit``)."""
        wall = self.leases.wall()
        if spec.run_id is None:
            spec = spec.model_copy(update={"run_id": new_run_id(wall)})
        assert spec.run_id is not None
        row = self.store.get_run(spec.run_id)
        if row is not None:
            check_resubmit(row, spec)
            return row, False
        row = submitted_run(spec, wall)
        message = f"submitted: mode {spec.mode}, priority {spec.priority}, max_restarts {spec.max_restarts}"
        self.store.save_run(
            row,
            [NewEvent(wall, 0, EventName.submitted.value, None, message)],
            durable=True,
            outbox=self.leases.callbacks_for(row, CallbackEvent.pending),
        )
        self.leases.stats.submits += 1
        self.leases.run_changed(row)
        log.info("run %s: %s", row.run_id, message)
        return row, True

    def cancel(self, run_id: str) -> RunRow:
        """Cancel a waiting run now, or flag a running one so its holder learns it on its next renew."""
        self.leases.expire_if_due(run_id)
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
        wall = self.leases.wall()
        target = runs.status_after_cancel(row.status)
        row.cancel_requested = True
        row.updated_at = wall
        if target is None:
            name, message = EventName.cancel_requested.value, "the holder stops at its next renew"
        else:
            row.status = target
            name, message = EventName.cancelled.value, f"cancelled while {previous.value}"
        outbox = self.leases.callbacks_for(row, CallbackEvent.cancelled) if target is not None else []
        self.store.save_run(
            row, [NewEvent(wall, row.epoch, name, None, message)], durable=True, outbox=outbox
        )
        self.leases.request_cancel(run_id)
        self.leases.run_changed(row)
        log.info("run %s: %s", run_id, message)
        return row
