"""Run statuses: the one table of allowed transitions, and the rules that pick a status.

Every status change in the commander goes through :func:`transition`, so a change
that is not in :data:`TRANSITIONS` cannot happen (it raises, and the tests walk
the whole table).  Which status a release, a cancel or an expiry leads to is
decided here too, so ``leases.py`` only says *what happened* to a lease.
"""

from __future__ import annotations

from relay.schema import CLOSED_STATUSES, ReleaseOutcome, RunStatus

S = RunStatus

#: from -> the statuses it may move to, and why each edge exists.
TRANSITIONS: dict[RunStatus, dict[RunStatus, str]] = {
    S.pending: {
        S.running: "a worker was granted the lease",
        S.cancelled: "cancelled before any worker took it",
    },
    S.running: {
        S.running: "re-granted to its restarted worker (which showed the lease it held) with a new epoch",
        S.preempted: "released as preempted, or the holder's lease expired",
        S.completed: "released as completed",
        S.failed: "released as failed",
        S.cancelled: "released as cancelled, or released/expired after a cancel request",
    },
    S.preempted: {
        S.running: "a worker resumed it",
        S.cancelled: "cancelled while waiting for a worker",
    },
    S.failed: {
        S.running: "restarted: a worker acquired it again by id",
        S.cancelled: "cancelled after failing, so nobody restarts it",
    },
    S.completed: {},
    S.cancelled: {},
}

#: Statuses a worker that asks for "any run" (no run_id) may be handed.
WAITING_STATUSES = (S.pending, S.preempted)

_OUTCOME_STATUS = {
    ReleaseOutcome.preempted: S.preempted,
    ReleaseOutcome.completed: S.completed,
    ReleaseOutcome.failed: S.failed,
    ReleaseOutcome.cancelled: S.cancelled,
}


class TransitionError(ValueError):
    """A status change the table does not allow: a bug in the caller, never a client error."""

    def __init__(self, current: RunStatus, target: RunStatus) -> None:
        super().__init__(f"run status cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


def can_transition(current: RunStatus, target: RunStatus) -> bool:
    return target in TRANSITIONS[current]


def transition(current: RunStatus, target: RunStatus) -> RunStatus:
    """Return ``target`` when the table allows ``current -> target``, else raise TransitionError."""
    if not can_transition(current, target):
        raise TransitionError(current, target)
    return target


def is_closed(status: RunStatus) -> bool:
    """Completed and cancelled runs are never granted again."""
    return status in CLOSED_STATUSES


def status_after_release(
    outcome: ReleaseOutcome, *, cancel_requested: bool, restart_allowed: bool = False, grantable: bool = True
) -> RunStatus:
    """The status a run takes when its holder releases it with ``outcome``.

    A cancel request wins over preempted/failed: a run someone asked to stop is
    not handed to the next worker.  A completed run stays completed.

    Commander-level restarts live here: a ``failed`` release of a run that may
    still be restarted (``restart_allowed``: a submitted run with restarts and
    running time left, decided by the lease manager, which counts the restart)
    becomes ``preempted``, so the next worker takes it from its last checkpoint.

    A run that can never be granted again (``grantable`` False: its remote holds an epoch no grant can
    exceed, see ``lease_rules.epoch_exhausted``) is not handed to a next worker: a preempted or failed
    release ends it ``failed``, so nobody loops on grants the remote refuses.
    """
    if cancel_requested and outcome is not ReleaseOutcome.completed:
        return S.cancelled
    if not grantable and outcome in (ReleaseOutcome.preempted, ReleaseOutcome.failed):
        return S.failed
    if outcome is ReleaseOutcome.failed and restart_allowed:
        return S.preempted
    return _OUTCOME_STATUS[outcome]


def status_after_expiry(*, cancel_requested: bool) -> RunStatus:
    """A holder that stopped renewing: the run waits for the next worker (or ends, if cancelled)."""
    return S.cancelled if cancel_requested else S.preempted


def status_after_cancel(current: RunStatus) -> RunStatus | None:
    """The status a cancel request sets now, or None when it only flags the run.

    A running run keeps running until its holder sees ``cancel_requested`` on its
    next renew and releases; anything waiting is cancelled at once.
    """
    if current is S.running:
        return None
    return transition(current, S.cancelled)
