"""Small helpers for calling the commander API from tests (request bodies built in one place)."""

from __future__ import annotations

import socket
from typing import Any

from aiohttp.test_utils import TestClient

from relay.commander.app import API_KEY
from relay.commander.leases import LeaseManager

SECRET = "test-secret-0123"


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leases_of(client: TestClient) -> LeaseManager:
    """The lease manager behind a test client (to seed states the API cannot create)."""
    return client.server.app[API_KEY].leases


async def acquire(
    client: TestClient, run_id: str | None = "r1", worker_id: str = "w1", **extra: Any
) -> tuple[int, dict]:
    body: dict[str, Any] = {"worker_id": worker_id, **extra}
    if run_id is not None:
        body["run_id"] = run_id
    resp = await client.post("/api/lease/acquire", json=body)
    return resp.status, await resp.json()


def lease_body(grant: dict, worker_id: str = "w1", **extra: Any) -> dict:
    return {
        "run_id": grant["run_id"],
        "worker_id": worker_id,
        "lease_id": grant["lease_id"],
        "epoch": grant["epoch"],
        **extra,
    }


async def renew(client: TestClient, grant: dict, worker_id: str = "w1", **over: Any) -> tuple[int, dict]:
    resp = await client.post("/api/lease/renew", json={**lease_body(grant, worker_id), **over})
    return resp.status, await resp.json()


async def release(
    client: TestClient, grant: dict, outcome: str, worker_id: str = "w1", **over: Any
) -> tuple[int, dict]:
    resp = await client.post(
        "/api/lease/release", json={**lease_body(grant, worker_id, outcome=outcome), **over}
    )
    return resp.status, await resp.json()


async def report(client: TestClient, grant: dict, worker_id: str = "w1", **fields: Any) -> tuple[int, dict]:
    body = {
        "worker_id": worker_id,
        "lease_id": grant["lease_id"],
        "epoch": grant["epoch"],
        "step": 0,
        **fields,
    }
    resp = await client.post(f"/api/runs/{grant['run_id']}/report", json=body)
    return resp.status, await resp.json()


async def get_run(client: TestClient, run_id: str = "r1") -> dict:
    resp = await client.get(f"/api/runs/{run_id}")
    assert resp.status == 200, await resp.text()
    return await resp.json()


#: the longest long poll a fuzzer may send: its calls time out after 10 s
FUZZ_MAX_WAIT_S = 1.0


def cap_long_poll(body: object) -> None:
    """A generated acquire body with a long ``wait_s`` would be held past the fuzzer's call timeout (the
    run it names may well be held): cut it to :data:`FUZZ_MAX_WAIT_S`, a value the document allows."""
    if (
        isinstance(body, dict)
        and isinstance(body.get("wait_s"), (int, float))
        and body["wait_s"] > FUZZ_MAX_WAIT_S
    ):
        body["wait_s"] = FUZZ_MAX_WAIT_S
