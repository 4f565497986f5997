"""The two lease rules, as pure functions the lease manager applies: who may be granted a run's
lease, and whether a request names the run's live lease (the fencing check).

* :data:`ACQUIRE_RULES` decides every acquire from (is the run closed?, who holds its lease now?).
  A worker id names one incarnation of one worker process: the same id asking again takes its live
  lease back only when it shows that lease (``AcquireRequest.held_lease``, kept on its volume by the
  process that held it), else it waits for the lease to expire like anyone else.
* Renew, release and report each present a lease (worker, lease id, epoch).  :func:`names_lease`
  is the one check they all pass through (``LeaseManager._current`` adds the expiry); a request
  that fails it changes nothing and is answered 409 with :func:`stale_reason`.
  :func:`is_fenced_holder` tells the holder of an ended lease calling again (its epoch's
  ``fenced`` event) from a request that never held anything (a typo, a forged id): only the
  former is worth a line in the timeline.
* :func:`next_epoch` is the epoch a grant carries: above the run's last one *and* above its floor, the
  highest epoch known outside this state (its remote's, ``ReleaseRequest.remote_epoch``, or one a
  holder showed), so epochs never go backwards against storage, even after the commander's own state
  was lost or restored from an older copy.  :data:`MAX_EPOCH` bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from relay.commander.store import LeaseRow, RunRow

#: The largest epoch a grant may carry: 2**53 - 1, the largest integer every JSON reader keeps exactly
#: (JavaScript's Number.MAX_SAFE_INTEGER: the dashboard, ``jq``).  A run whose remote was found at this
#: epoch or above cannot be granted again (the remote would refuse every holder's claim): it ends
#: ``failed`` naming the remote's epoch, instead of a loop of grants the remote refuses.
MAX_EPOCH = 2**53 - 1


class Holder(Enum):
    """Who holds a run's lease at the moment of an acquire (expired leases are ended first)."""

    nobody = "nobody"
    #: the same worker id, showing the live lease it held (a restarted worker process)
    same_worker_proven = "same_worker_proven"
    #: the same worker id without that proof: a second process with a copied WORKER_ID, or one that lost
    #: the file it keeps its lease in
    same_worker = "same_worker"
    other_worker = "other_worker"


class Decision(Enum):
    grant = "grant"
    deny_held = "deny_held"
    deny_closed = "deny_closed"


#: (run is closed, current holder) -> decision.  "same_worker_proven" is a worker that restarted and
#: shows the lease its previous incarnation held: it is granted at once with a new epoch, which fences
#: off whatever that incarnation still does.  "same_worker" (the id alone) proves nothing - two pods
#: with one copied WORKER_ID would take the run from each other on every acquire - so it waits.
ACQUIRE_RULES: dict[tuple[bool, Holder], Decision] = {
    (False, Holder.nobody): Decision.grant,
    (False, Holder.same_worker_proven): Decision.grant,
    (False, Holder.same_worker): Decision.deny_held,
    (False, Holder.other_worker): Decision.deny_held,
    (True, Holder.nobody): Decision.deny_closed,
    (True, Holder.same_worker_proven): Decision.deny_closed,
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
    started_at: float = 0.0  # monotonic clock: when this commander started counting the lease's time
    counted_s: float = 0.0  # running time counted before that (by an earlier commander process)

    def active_s(self, now: float) -> float:
        """Seconds the run has been held under this lease (the max_duration_s budget), as of ``now``
        (monotonic): never a difference of wall-clock times, which an NTP step would distort."""
        return self.counted_s + max(0.0, now - self.started_at)


#: How a lease ends when its holder loses it (rather than releasing it): its later calls are fenced.
FENCING_ENDS = frozenset({"expired", "fenced"})


class LeaseClaim(Protocol):
    """What a renew, release or report presents: the lease it believes it holds."""

    worker_id: str
    lease_id: str
    epoch: int


class HeldProof(Protocol):
    """What a restarted worker shows of the lease it held (``relay.schema.HeldLease``)."""

    lease_id: str
    epoch: int


def decide_acquire(
    closed: bool, lease: LiveLease | None, worker_id: str, held: HeldProof | None = None
) -> tuple[Decision, Holder]:
    """The acquire table's answer for ``worker_id`` asking for a run (``lease``: its live lease,
    ``held``: the lease the asking process says it held)."""
    if lease is None:
        holder = Holder.nobody
    elif lease.worker_id != worker_id:
        holder = Holder.other_worker
    elif held is not None and held.lease_id == lease.lease_id and held.epoch == lease.epoch:
        holder = Holder.same_worker_proven
    else:
        holder = Holder.same_worker
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


def next_epoch(row: RunRow) -> int:
    """The epoch the run's next grant carries: past its last grant and past what its remote holds."""
    return max(row.epoch, row.epoch_floor or 0) + 1


def epoch_exhausted(row: RunRow) -> str | None:
    """Why the run can never be granted again because of the epoch its remote holds (its floor), or None."""
    if next_epoch(row) <= MAX_EPOCH:
        return None
    return (
        f"run {row.run_id} cannot be granted again: its remote holds epoch {row.epoch_floor}, and a grant "
        f"must carry a higher one, but the largest epoch is {MAX_EPOCH} (2**53-1). The remote's "
        "relay/state.json was corrupted or written by something else: check it, and train under a new run id"
    )


def held_message(run_id: str, lease: LiveLease, holder: Holder, retry_after_s: float) -> str:
    """The denial of an acquire of a held run; a same-id holder is told why its id alone is not enough."""
    base = f"run {run_id} is held by worker {lease.worker_id} (epoch {lease.epoch})"
    wait = f"its lease expires in {retry_after_s:.1f}s unless renewed"
    if holder is Holder.same_worker:
        return (
            f"{base}, this worker id, but this acquire did not show that lease: another process runs with "
            f"the same WORKER_ID (each pod needs its own), or this one lost runs/{run_id}/lease.json "
            f"on its volume; {wait}"
        )
    return f"{base}; {wait}"


class LeaseWatch(Protocol):
    """Told of every new live lease and every run change that may make a run grantable (the long-polled
    acquires of ``relay.commander.wakeups`` wait on these)."""

    def lease_started(self, lease: LiveLease) -> None: ...

    def leases_reloaded(self, leases: list[LiveLease]) -> None: ...

    def run_changed(self, row: RunRow) -> None: ...
