"""The two lease rules, as pure functions the lease manager applies: who may be granted a run's
lease, and whether a request names the run's live lease (the fencing check).

* :data:`ACQUIRE_RULES` decides every acquire from (is the run closed?, who holds its lease now?).
* Renew, release and report each present a lease (worker, lease id, epoch).  :func:`names_lease`
  is the one check they all pass through (``LeaseManager._current`` adds the expiry); a request
  that fails it changes nothing and is answered 409 with :func:`stale_reason`.
  :func:`is_fenced_holder` tells the holder of an ended lease calling again (its epoch's
  ``fenced`` event) from a request that never held anything (a typo, a forged id): only the
  former is worth a line in the timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from relay.commander.store import LeaseRow, RunRow


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


#: How a lease ends when its holder loses it (rather than releasing it): its later calls are fenced.
FENCING_ENDS = frozenset({"expired", "fenced"})


class LeaseClaim(Protocol):
    """What a renew, release or report presents: the lease it believes it holds."""

    worker_id: str
    lease_id: str
    epoch: int


def decide_acquire(closed: bool, lease: LiveLease | None, worker_id: str) -> tuple[Decision, Holder]:
    """The acquire table's answer for ``worker_id`` asking for a run (``lease``: its live lease)."""
    if lease is None:
        holder = Holder.nobody
    elif lease.worker_id == worker_id:
        holder = Holder.same_worker
    else:
        holder = Holder.other_worker
    return ACQUIRE_RULES[(closed, holder)], holder


def names_lease(lease: LiveLease | None, claim: LeaseClaim) -> bool:
    """Whether ``claim`` names ``lease`` exactly: lease id, epoch and worker (expiry aside)."""
    return (
        lease is not None
        and lease.lease_id == claim.lease_id
        and lease.epoch == claim.epoch
        and lease.worker_id == claim.worker_id
    )


def stale_reason(lease: LiveLease | None, row: RunRow | None, claim: LeaseClaim) -> str:
    """Why ``claim`` is not the live lease (``lease``: the run's live one, ``row``: the run)."""
    if lease is not None and lease.worker_id != claim.worker_id:
        return f"it is held by worker {lease.worker_id} at epoch {lease.epoch}"
    if lease is not None and lease.epoch != claim.epoch:
        return f"the current lease has epoch {lease.epoch}, not {claim.epoch}"
    if lease is not None:
        return "the lease id does not match the current lease"
    if row is None:
        return "no such run"
    if row.epoch != claim.epoch:
        return f"the run is at epoch {row.epoch}, not {claim.epoch}, and nobody holds it now ({row.status.value})"
    return f"the lease was released or expired ({row.status.value})"


def is_fenced_holder(past: LeaseRow | None, claim: LeaseClaim) -> bool:
    """Whether a refused ``claim`` comes from the real holder of a lease it lost without handing it back
    (``past``: the history row of the claimed epoch, ended by expiry or by a newer grant), and that
    fencing is not recorded yet: a fenced worker may call a few times.  A holder that released its
    lease is not fenced: a renew still in flight behind its release is refused, and that is all."""
    return (
        past is not None
        and past.ended in FENCING_ENDS
        and past.fenced_at is None
        and past.lease_id == claim.lease_id
        and past.worker_id == claim.worker_id
    )


class LeaseWatch(Protocol):
    """Told of every new live lease and every run change that may make a run grantable (the long-polled
    acquires of ``relay.commander.wakeups`` wait on these)."""

    def lease_started(self, lease: LiveLease) -> None: ...

    def leases_reloaded(self, leases: list[LiveLease]) -> None: ...

    def run_changed(self, row: RunRow) -> None: ...
