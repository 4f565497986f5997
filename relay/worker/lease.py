"""The lease this worker holds: one frozen value made from the commander's grant and passed whole.

Everything that acts under a lease (renewal, reports, the release, events, state.json, the remote's
epoch) needs the same four facts: the run, this worker, the lease id and the epoch.  They travel
together as one :class:`Lease`, so no collaborator can be built with an epoch from one grant and a
lease id from another, and the wire requests that must name the lease are made here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.schema import AcquireGranted, ReleaseRequest, RenewRequest, RunSpec


@dataclass(frozen=True)
class Lease:
    """One grant: who holds which run under which epoch, for how long, and what the run's spec says."""

    run_id: str
    worker_id: str
    lease_id: str
    epoch: int
    ttl_s: float
    renew_interval_s: float
    #: monotonic time the acquire request was sent: the worker counts the TTL from here, never later
    #: than the commander's own clock started it
    sent_at: float
    spec: RunSpec | None = None

    @classmethod
    def from_grant(cls, grant: AcquireGranted, *, worker_id: str, sent_at: float) -> Lease:
        return cls(
            run_id=grant.run_id,
            worker_id=worker_id,
            lease_id=grant.lease_id,
            epoch=grant.epoch,
            ttl_s=float(grant.ttl_s),
            renew_interval_s=float(grant.renew_interval_s),
            sent_at=sent_at,
            spec=getattr(grant, "spec", None),
        )

    def renew_request(self) -> RenewRequest:
        from relay.schema import RenewRequest

        return RenewRequest(
            run_id=self.run_id, worker_id=self.worker_id, lease_id=self.lease_id, epoch=self.epoch
        )

    def release_request(self, outcome: str, detail: str, **fields: Any) -> ReleaseRequest:
        from relay.schema import ReleaseRequest

        return ReleaseRequest(
            run_id=self.run_id,
            worker_id=self.worker_id,
            lease_id=self.lease_id,
            epoch=self.epoch,
            outcome=outcome,
            detail=detail[:8000],
            **fields,
        )

    def report_fields(self) -> dict[str, Any]:
        """The fields that name this lease in a progress report (the run id travels in the URL)."""
        return {"worker_id": self.worker_id, "lease_id": self.lease_id, "epoch": self.epoch}
