"""The live leases in memory: the table a renewal reads, and how it is rebuilt from the store.

Lease deadlines live only here (``LiveLease.expires_at``, monotonic clock), so a renewal is a dict
lookup and never touches the disk.  The store says which leases are held; this table adds when each
one expires.  Two ways to rebuild it, with different rules:

* :meth:`LiveLeases.rebuild` at start-up: every held lease gets a full TTL, so its holder can renew
  after a commander restart and nobody else is granted the run meanwhile.
* :meth:`LiveLeases.resync` after a commit failed (the store rolled the batch back): memory follows
  the disk again, but a lease this table knew keeps its deadline, even when the rolled-back change
  had ended it (an expiry, a release, a replacement).  A store that keeps failing therefore never
  hands a dead holder a fresh TTL; only a lease the table never saw gets a full one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from relay.commander.lease_rules import LiveLease
from relay.commander.store import RunRow

#: leases that left memory are kept aside this long (in TTLs) for resync; a commit follows in one loop turn
_KEEP_ENDED_TTLS = 1.0


class LiveLeases:
    """run_id -> its live lease, plus the leases that left lately (for :meth:`resync`)."""

    def __init__(self, ttl_s: float, monotonic: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        self._live: dict[str, LiveLease] = {}
        self._ended: dict[tuple[str, str], tuple[LiveLease, float]] = {}

    def get(self, run_id: str) -> LiveLease | None:
        return self._live.get(run_id)

    def put(self, lease: LiveLease) -> None:
        self._live[lease.run_id] = lease

    def forget(self, lease: LiveLease) -> None:
        """``lease`` left memory (released, expired, replaced); kept aside a while for :meth:`resync`."""
        now = self.monotonic()
        if self._live.get(lease.run_id) is lease:
            del self._live[lease.run_id]
        self._ended[(lease.run_id, lease.lease_id)] = (lease, now)
        if len(self._ended) > 64:
            horizon = now - self.ttl_s * _KEEP_ENDED_TTLS
            self._ended = {k: v for k, v in self._ended.items() if v[1] > horizon}

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[LiveLease]:
        return iter(list(self._live.values()))

    def rebuild(self, held: Iterable[RunRow]) -> int:
        """Start-up: the store's held leases, each with a full TTL; returns how many."""
        now = self.monotonic()
        self._live = {row.run_id: self._from_row(row, now) for row in held}
        return len(self._live)

    def resync(self, held: Iterable[RunRow]) -> None:
        """After a rolled-back commit: the store's held leases, each keeping the deadline it had."""
        known = {(lease.run_id, lease.lease_id): lease for lease, _ in self._ended.values()}
        known.update({(lease.run_id, lease.lease_id): lease for lease in self._live.values()})
        now = self.monotonic()
        self._live = {}
        for row in held:
            self._live[row.run_id] = known.get((row.run_id, row.lease_id or "")) or self._from_row(row, now)

    def _from_row(self, row: RunRow, now: float) -> LiveLease:
        return LiveLease(
            run_id=row.run_id,
            lease_id=row.lease_id or "",
            epoch=row.epoch,
            worker_id=row.lease_worker or "",
            expires_at=now + self.ttl_s,
            last_renew_at=None,
            cancel_requested=row.cancel_requested,
            started_at=now,
            counted_s=row.lease_active_s,
        )
