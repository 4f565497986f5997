"""A :class:`relay.worker.lease.Lease` for tests that drive the worker's parts directly (no commander)."""

from __future__ import annotations

import time

from relay.worker.lease import Lease


def make_lease(
    run_id: str = "r",
    worker_id: str = "w",
    *,
    lease_id: str = "l",
    epoch: int = 1,
    ttl_s: float = 60.0,
    renew_interval_s: float = 20.0,
    sent_at: float | None = None,
) -> Lease:
    """A lease as if granted now (``sent_at`` defaults to the current monotonic time)."""
    return Lease(
        run_id=run_id,
        worker_id=worker_id,
        lease_id=lease_id,
        epoch=epoch,
        ttl_s=ttl_s,
        renew_interval_s=renew_interval_s,
        sent_at=time.monotonic() if sent_at is None else sent_at,
    )
