"""A failing commander store never makes things worse (issue 13, point 10): a commit that fails rolls
memory back to the disk without handing any lease a fresh TTL, live holders keep renewing from memory,
nobody is granted what could not be recorded, and the operator reads one clear line, not one per
request."""

from __future__ import annotations

import asyncio
import logging
import time

from relay_testkit.wait import until
from tests.commander.calls import acquire, leases_of, renew, report
from tests.commander.test_store import FailingCommits


async def test_failed_commits_never_extend_a_dead_holders_lease(make_commander, caplog) -> None:
    caplog.set_level(logging.INFO, logger="relay.commander")
    ttl = 1.0
    client = await make_commander(lease_ttl_s=ttl, sweep_interval_s=0.05)
    leases = leases_of(client)
    _, dead = await acquire(client, "dead", "w1")  # its holder never calls again
    _, live = await acquire(client, "live", "w2")
    dead_lease = leases.live_lease("dead")
    assert dead_lease is not None
    deadline = dead_lease.expires_at
    proxy = FailingCommits(leases.store._conn)
    leases.store._conn = proxy  # type: ignore[assignment]
    proxy.failing = True

    failed_reports = 0
    stop_at = time.monotonic() + 3 * ttl  # well past the dead lease's deadline
    while time.monotonic() < stop_at:
        assert (await renew(client, live, "w2"))[0] == 200  # renewals live in memory: they go on
        status, body = await report(client, live, "w2", step=failed_reports)
        assert status == 503 and body["code"] == "store_error", body  # its commit failed: memory resyncs
        failed_reports += 1
        lease = leases.live_lease("dead")
        assert lease is None or lease.expires_at <= deadline, "a failed commit extended a dead lease"
        await asyncio.sleep(0.05)
    status, body = await acquire(client, "dead", "w3")
    assert status == 503, body  # a grant that cannot be recorded is not made

    proxy.failing = False

    async def taken() -> bool:
        status, grant = await acquire(client, "dead", "w3")
        return status == 200 and grant["epoch"] == 2

    await until(taken, 10, "the dead holder's run to go to w3 once commits succeed")
    assert (await renew(client, live, "w2"))[0] == 200
    assert (await renew(client, dead))[0] == 409
    commit_lines = [r for r in caplog.records if "could not commit" in r.getMessage()]
    assert failed_reports > 10 and 1 <= len(commit_lines) <= 2, [r.getMessage() for r in commit_lines]
    assert "answered 503 until a commit succeeds" in commit_lines[0].getMessage()
    assert any("commits again" in r.getMessage() for r in caplog.records)
