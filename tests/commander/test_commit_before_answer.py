"""An endpoint that writes answers only once the store has committed what it wrote.

Endpoints declare it (``Endpoint.mutates`` in ``relay.commander.routes``) and the wrapper awaits the
commit, so no handler has to remember.  Here the store's commit is held: a mutating endpoint must
not answer while it is held, and must answer once it is released; a non-mutating one answers at
once.  A second test drives every endpoint and checks the declarations against what each really
writes, so a new endpoint that writes cannot be declared (or left) non-mutating by mistake.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.commander.config import CallbackSettings
from relay.commander.routes import ENDPOINTS
from tests.commander.calls import acquire, lease_body, leases_of

MUTATING = {ep.handler for ep in ENDPOINTS if ep.mutates}

#: handler -> (method, path, body) of a valid call, given the grant of run "r1" held by w1.
Call = Callable[[dict], tuple[str, str, Any]]
CALLS: dict[str, Call] = {
    "health": lambda g: ("GET", "/api/health", None),
    "openapi": lambda g: ("GET", "/api/openapi.json", None),
    "acquire": lambda g: ("POST", "/api/lease/acquire", {"run_id": "other", "worker_id": "w2"}),
    "renew": lambda g: ("POST", "/api/lease/renew", lease_body(g)),
    "release": lambda g: ("POST", "/api/lease/release", lease_body(g, outcome="preempted")),
    "report": lambda g: (
        "POST",
        "/api/runs/r1/report",
        {k: v for k, v in lease_body(g, step=3).items() if k != "run_id"},
    ),
    "list_runs": lambda g: ("GET", "/api/runs", None),
    "submit": lambda g: ("POST", "/api/runs", {"run_id": "job-1", "mode": "sft"}),
    "get_run": lambda g: ("GET", "/api/runs/r1", None),
    "cancel": lambda g: ("POST", "/api/runs/r1/cancel", None),
    "logs": lambda g: ("GET", "/api/runs/r1/logs", None),
    "metrics": lambda g: ("GET", "/metrics", None),
}


def test_every_endpoint_has_a_call_here() -> None:
    assert set(CALLS) == {ep.handler for ep in ENDPOINTS}
    assert MUTATING == {"acquire", "release", "report", "submit", "cancel"}


@pytest.fixture
async def quiet(make_commander) -> TestClient:
    # No callback delivery loop: it awaits commits too, and would take the held one first.
    return await make_commander(callbacks=CallbackSettings(deliver=False))


class HeldCommits:
    """Stands in for ``Store.committed``: records each await and holds it until ``release()``."""

    def __init__(self, real: Callable[[], Awaitable[None]], store: Any) -> None:
        self.real = real
        self.store = store
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.uncommitted_when_entered: bool | None = None

    async def __call__(self) -> None:
        self.uncommitted_when_entered = self.store._tx_open
        self.entered.set()
        await self.gate.wait()
        await self.real()

    def reset(self) -> None:
        self.entered.clear()
        self.gate.clear()
        self.uncommitted_when_entered = None


async def test_mutating_endpoints_answer_only_after_the_commit(quiet: TestClient, tmp_path) -> None:
    store = leases_of(quiet).store
    _, grant = await acquire(quiet, "r1", "w1")
    held = HeldCommits(store.committed, store)
    store.committed = held  # type: ignore[method-assign]
    reader = sqlite3.connect(store.path)
    try:
        for handler in ("health", "get_run", "list_runs", "logs", "renew", "openapi", "metrics"):
            method, path, body = CALLS[handler](grant)
            resp = await asyncio.wait_for(quiet.request(method, path, json=body), 10)
            assert resp.status == 200, (handler, await resp.text())
            assert not held.entered.is_set(), f"{handler} does not mutate, yet awaited a commit"
        for handler in ("report", "submit", "acquire", "cancel", "release"):
            held.reset()
            method, path, body = CALLS[handler](grant)
            answer = asyncio.ensure_future(quiet.request(method, path, json=body))
            await asyncio.wait_for(held.entered.wait(), 10)
            assert held.uncommitted_when_entered, f"{handler}: nothing was waiting to be committed"
            for _ in range(20):  # give the server every chance to answer early
                await asyncio.sleep(0)
            assert not answer.done(), f"{handler} answered before its commit"
            held.gate.set()
            resp = await asyncio.wait_for(answer, 10)
            assert resp.status in (200, 201), (handler, await resp.text())
        # answered, so committed: another connection sees every write
        assert reader.execute("SELECT status FROM runs WHERE run_id = 'r1'").fetchone() == ("cancelled",)
        assert reader.execute("SELECT status FROM runs WHERE run_id = 'job-1'").fetchone() == ("pending",)
        assert reader.execute("SELECT lease_worker FROM runs WHERE run_id = 'other'").fetchone() == ("w2",)
    finally:
        held.gate.set()
        reader.close()


async def test_declarations_match_what_each_endpoint_writes(quiet: TestClient) -> None:
    store = leases_of(quiet).store
    _, grant = await acquire(quiet, "r1", "w1")
    writes: list[str] = []
    real_write = store._write

    def counting(durable: bool, work: Any) -> None:
        writes.append(work[0][0].split()[0])
        real_write(durable, work)

    store._write = counting  # type: ignore[method-assign]
    # every endpoint in an order that keeps each call valid: reads and renew first, then the writes
    order = ["health", "openapi", "renew", "list_runs", "get_run", "logs", "metrics", "report", "submit"]
    order += ["acquire", "cancel", "release"]
    for handler in order:
        writes.clear()
        method, path, body = CALLS[handler](grant)
        resp = await quiet.request(method, path, json=body)
        assert resp.status in (200, 201), (handler, await resp.text())
        if handler in MUTATING:
            assert writes, f"{handler} is declared mutating but wrote nothing"
        else:
            assert not writes, f"{handler} wrote {writes} but is not declared mutating (Endpoint.mutates)"


async def test_a_commit_that_fails_turns_a_refusal_into_a_503_too(quiet: TestClient) -> None:
    """A mutating endpoint's refusal may follow writes (an expiry found on the way); they are committed
    first, and a failed commit is reported as such rather than as the refusal."""
    store = leases_of(quiet).store

    async def failing() -> None:
        from relay.commander.store import StoreError

        raise StoreError("could not commit to state file: disk full")

    store.committed = failing  # type: ignore[method-assign]
    resp = await quiet.post("/api/lease/acquire", json={"worker_id": "w9"})  # no waiting run: a 404 ...
    body = await resp.json()
    assert (resp.status, body["code"]) == (503, "store_error"), body  # ... unless its commit failed
    assert (await quiet.get("/api/runs")).status == 200  # reads never await a commit
