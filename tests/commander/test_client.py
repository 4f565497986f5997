"""CommanderClient against the real app: every answer maps to its exception, with a one-line message."""

from __future__ import annotations

import pytest
from aiohttp import web

from relay.client import (
    BadRequest,
    CommanderClient,
    CommanderError,
    CommanderUnreachable,
    Fenced,
    LeaseHeld,
    NotFound,
    NoWaitingRun,
    RunClosed,
    Unauthorized,
)
from relay.schema import (
    AcquireRequest,
    ReleaseOutcome,
    ReleaseRequest,
    RenewRequest,
    ReportRequest,
    RunStatus,
)
from tests.commander.calls import SECRET, closed_port


@pytest.fixture
async def api(make_commander):
    """A CommanderClient talking to the app over real HTTP (with a secret)."""
    server = await make_commander(secret=SECRET)
    async with CommanderClient(str(server.make_url("")), SECRET, timeout_s=5) as c:
        yield c


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


async def test_lease_lifecycle_and_fencing(api):
    grant = await api.acquire(AcquireRequest(run_id="r1", worker_id="w1", mode="sft"))
    assert grant.granted and grant.epoch == 1 and grant.run.status is RunStatus.running

    with pytest.raises(LeaseHeld) as held:
        await api.acquire(AcquireRequest(run_id="r1", worker_id="w2"))
    assert held.value.holder == "w1" and 0 < held.value.retry_after_s <= 60
    assert "w1" in one_line(held.value)

    lease = {"run_id": "r1", "worker_id": "w1", "lease_id": grant.lease_id, "epoch": 1}
    renewed = await api.renew(RenewRequest(**lease))
    assert renewed.ok and renewed.ttl_s == 60 and renewed.cancel_requested is False
    assert (
        await api.report("r1", ReportRequest(worker_id="w1", lease_id=grant.lease_id, epoch=1, step=4))
    ).ok
    summary = await api.cancel("r1")
    assert summary.cancel_requested and summary.status is RunStatus.running
    assert (await api.renew(RenewRequest(**lease))).cancel_requested is True
    released = await api.release(ReleaseRequest(**lease, outcome=ReleaseOutcome.cancelled))
    assert released.status is RunStatus.cancelled

    stale = RenewRequest(**lease)
    with pytest.raises(Fenced) as fenced:
        await api.renew(stale)
    assert "no longer current" in one_line(fenced.value)
    with pytest.raises(Fenced):
        await api.report("r1", ReportRequest(worker_id="w1", lease_id=grant.lease_id, epoch=1, step=5))
    with pytest.raises(Fenced):
        await api.release(ReleaseRequest(**{**lease, "epoch": 7}, outcome="failed"))

    with pytest.raises(RunClosed) as closed:
        await api.acquire(AcquireRequest(run_id="r1", worker_id="w2"))
    assert closed.value.status is RunStatus.cancelled

    detail = await api.get_run("r1")
    assert detail.step == 4 and [e.name for e in detail.events][-1] == "cancelled"
    assert [r.run_id for r in await api.list_runs()] == ["r1"]


async def test_not_found_no_waiting_run_and_bad_requests(api):
    with pytest.raises(NoWaitingRun):
        await api.acquire(AcquireRequest(worker_id="w1"))
    with pytest.raises(NotFound):
        await api.get_run("nope")
    with pytest.raises(NotFound):
        await api.cancel("nope")
    grant = await api.acquire(AcquireRequest(run_id="r1", worker_id="w1", mode="sft"))
    await api.release(
        ReleaseRequest(run_id="r1", worker_id="w1", lease_id=grant.lease_id, epoch=1, outcome="completed")
    )
    with pytest.raises(RunClosed) as closed:
        await api.cancel("r1")
    assert closed.value.status is RunStatus.completed
    await api.acquire(AcquireRequest(run_id="r2", worker_id="w1", mode="sft"))
    with pytest.raises(BadRequest) as bad:
        await api.acquire(AcquireRequest(run_id="r2", worker_id="w1", mode="rl"))
    assert (bad.value.status, bad.value.field) == (422, "mode")
    with pytest.raises(BadRequest) as bad:  # refused before anything is sent: '..' would be resolved in a URL
        await api.get_run("..")
    assert (bad.value.status, bad.value.field) == (400, "run_id")


async def test_wrong_secret_is_unauthorized(make_commander):
    server = await make_commander(secret=SECRET)
    async with CommanderClient(str(server.make_url("")), "wrong") as c:
        assert (await c.health()).ok  # health needs no secret
        with pytest.raises(Unauthorized) as exc:
            await c.list_runs()
    assert "401" in one_line(exc.value) and "RELAY_SHARED_SECRET" in str(exc.value)


async def test_unreachable_and_server_errors(aiohttp_server):
    port = closed_port()
    async with CommanderClient(f"http://127.0.0.1:{port}", timeout_s=2) as c:
        with pytest.raises(CommanderUnreachable) as exc:
            await c.health()
    assert f"127.0.0.1:{port}" in one_line(exc.value)

    async def boom(request):
        return web.Response(status=503, text="upstream gone")

    async def not_json(request):
        return web.Response(status=200, text="<html>hello</html>")

    app = web.Application()
    app.router.add_get("/api/health", not_json)
    app.router.add_get("/api/runs", boom)
    server = await aiohttp_server(app)
    async with CommanderClient(str(server.make_url(""))) as c:
        with pytest.raises(CommanderUnreachable, match="503"):
            await c.list_runs()
        with pytest.raises(CommanderUnreachable, match="not a commander"):
            await c.health()


def test_client_rejects_a_url_without_scheme():
    with pytest.raises(ValueError, match="http://"):
        CommanderClient("127.0.0.1:8080")


def test_every_client_error_is_a_commander_error():
    for exc in (
        CommanderUnreachable,
        Unauthorized,
        Fenced,
        LeaseHeld,
        RunClosed,
        NoWaitingRun,
        NotFound,
        BadRequest,
    ):
        assert issubclass(exc, CommanderError)
