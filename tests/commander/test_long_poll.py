"""Long-polled acquires (``AcquireRequest.wait_s``): a waiting pod is woken by the change that makes
the run grantable - a release, an expiry, a submit - or told no by a cancel; a wait that ends unchanged
answers exactly what an acquire without ``wait_s`` answers; a pod that hung up is never granted.

No timing is asserted: the sweeper is slowed to once an hour wherever expiry matters, so only the
expiry clock can have ended a lease, and "still waiting" is read from the parked-acquire count.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from relay.commander.config import CallbackSettings
from relay_testkit.wait import until, wait_for
from tests.commander.calls import acquire, get_run, leases_of, release, renew
from tests.commander.test_commit_before_answer import HeldCommits

LONG = 120.0  # a wait no test lets run out: the answer must come from a change


def parked(client: TestClient) -> int:
    watch = leases_of(client).watch
    assert watch is not None
    return watch.waiters.count()


async def wait_parked(client: TestClient, n: int = 1) -> None:
    await until(lambda: parked(client) == n, 30, f"{n} parked acquire(s)")


def waiting_acquire(client: TestClient, run_id: str | None, worker_id: str, **extra: Any) -> asyncio.Task:
    return asyncio.ensure_future(acquire(client, run_id, worker_id, wait_s=LONG, **extra))


async def test_a_waiting_pod_is_granted_when_the_holder_releases(client: TestClient) -> None:
    _, held = await acquire(client, "r1", "w1")
    answer = waiting_acquire(client, "r1", "w2")
    await wait_parked(client)
    assert not answer.done()
    status, _ = await release(client, held, "preempted")
    assert status == 200
    status, grant = await asyncio.wait_for(answer, 30)
    assert status == 200, grant
    assert (grant["run_id"], grant["epoch"]) == ("r1", 2)
    assert grant["waited_s"] > 0
    assert (await get_run(client))["holder"] == "w2"
    assert parked(client) == 0


async def test_an_expiry_wakes_the_waiter_at_the_lease_s_expiry_not_at_a_sweep(make_commander) -> None:
    client = await make_commander(lease_ttl_s=1.0, sweep_interval_s=3600)
    _, held = await acquire(client, "r1", "w1")
    answer = waiting_acquire(client, "r1", "w2")
    await wait_parked(client)
    status, grant = await asyncio.wait_for(answer, 30)  # w1 never renews
    assert status == 200, grant
    assert grant["epoch"] == 2
    names = [e["name"] for e in (await get_run(client))["events"]]
    assert names.index("lease_expired") < len(names) - 1 and names[-1] == "acquired"
    status, _ = await renew(client, held)
    assert status == 409  # the expired holder is fenced


async def test_a_renewed_lease_keeps_its_waiter_waiting(make_commander) -> None:
    client = await make_commander(lease_ttl_s=1.0, sweep_interval_s=3600)
    _, held = await acquire(client, "r1", "w1")
    answer = waiting_acquire(client, "r1", "w2")
    await wait_parked(client)
    for _ in range(8):  # renewing across several TTLs: the expiry clock re-arms, ends nothing
        await asyncio.sleep(0.25)
        status, _ = await renew(client, held)
        assert status == 200
    assert not answer.done() and parked(client) == 1
    status, grant = await asyncio.wait_for(answer, 30)  # then w1 stops renewing
    assert status == 200 and grant["epoch"] == 2


async def test_a_submit_wakes_an_idle_pool_pod(client: TestClient) -> None:
    answer = waiting_acquire(client, None, "pool-1", mode="sft")
    await wait_parked(client)
    resp = await client.post("/api/runs", json={"run_id": "job-1", "mode": "sft"})
    assert resp.status == 201
    status, grant = await asyncio.wait_for(answer, 30)
    assert status == 200, grant
    assert grant["run_id"] == "job-1"


async def test_one_submitted_run_goes_to_one_of_many_pool_pods(client: TestClient) -> None:
    answers = [waiting_acquire(client, None, f"pool-{i}", mode="sft") for i in range(50)]
    await wait_parked(client, 50)
    resp = await client.post("/api/runs", json={"run_id": "job-1", "mode": "sft"})
    assert resp.status == 201
    await until(lambda: sum(a.done() for a in answers) == 1, 30, "one pool pod answered")
    granted = next(a for a in answers if a.done()).result()
    assert granted[0] == 200 and granted[1]["run_id"] == "job-1"
    await wait_parked(client, 49)  # the others went back to waiting
    assert granted[1]["run"]["holder"] == "pool-0"  # the longest waiter asks first
    for a in answers:
        a.cancel()


async def test_a_pool_pod_is_not_woken_for_a_run_of_another_mode(client: TestClient) -> None:
    answer = waiting_acquire(client, None, "pool-rl", mode="rl")
    await wait_parked(client)
    resp = await client.post("/api/runs", json={"run_id": "job-sft", "mode": "sft"})
    assert resp.status == 201
    resp = await client.post("/api/runs", json={"run_id": "job-rl", "mode": "rl"})
    assert resp.status == 201
    status, grant = await asyncio.wait_for(answer, 30)
    assert status == 200 and grant["run_id"] == "job-rl"


async def test_a_cancel_answers_the_waiter_with_the_closed_run(client: TestClient) -> None:
    resp = await client.post("/api/runs", json={"run_id": "job-1", "mode": "sft"})
    _, held = await acquire(client, "job-1", "w1")
    answer = waiting_acquire(client, "job-1", "w2")
    await wait_parked(client)
    await client.post("/api/runs/job-1/cancel")  # running: the holder is flagged; the waiter waits on
    await release(client, held, "cancelled")
    status, denied = await asyncio.wait_for(answer, 30)
    assert resp.status == 201
    assert status == 409 and denied["status"] == "cancelled" and denied["granted"] is False


async def test_a_wait_that_runs_out_answers_as_an_acquire_without_wait(client: TestClient) -> None:
    await acquire(client, "r1", "w1")
    plain = await acquire(client, "r1", "w2")
    waited = await acquire(client, "r1", "w2", wait_s=0.2)
    assert plain[0] == waited[0] == 409
    same = ("granted", "holder", "status")  # the rest names the time left, which moved on meanwhile
    assert (
        {k: plain[1][k] for k in same}
        == {k: waited[1][k] for k in same}
        == {
            "granted": False,
            "holder": "w1",
            "status": "running",
        }
    )
    assert waited[1]["detail"].startswith("run r1 is held by worker w1 (epoch 1)")
    none_waiting = await acquire(client, None, "pool-1", mode="rl")
    none_waited = await acquire(client, None, "pool-1", mode="rl", wait_s=0.2)
    assert none_waiting == none_waited
    assert none_waited[0] == 404


@pytest.mark.parametrize("wait_s", [-1, 601, "5", True])
async def test_a_bad_wait_is_a_422_naming_it(client: TestClient, wait_s: Any) -> None:
    status, body = await acquire(client, "r1", "w1", wait_s=wait_s)
    assert status == 422, body
    assert body["field"] == "wait_s"


async def test_a_pod_that_hung_up_while_waiting_is_never_granted(client: TestClient) -> None:
    _, held = await acquire(client, "r1", "w1")
    session = aiohttp.ClientSession()
    body = {"run_id": "r1", "worker_id": "gone", "wait_s": LONG}
    call = asyncio.ensure_future(session.post(client.make_url("/api/lease/acquire"), json=body))
    await wait_parked(client)
    call.cancel()
    await session.close()  # the pod is gone: its connection closes
    await until(lambda: parked(client) == 0, 30, "the hung-up acquire to stop waiting")
    await release(client, held, "preempted")
    run = await get_run(client)
    assert run["holder"] is None and run["status"] == "preempted"


async def test_a_grant_after_a_wait_is_committed_before_it_is_answered(make_commander) -> None:
    client = await make_commander(callbacks=CallbackSettings(deliver=False))
    store = leases_of(client).store
    _, held = await acquire(client, "r1", "w1")
    answer = waiting_acquire(client, "r1", "w2")
    await wait_parked(client)
    gate = HeldCommits(store.committed, store)
    store.committed = gate  # type: ignore[method-assign]
    reader = sqlite3.connect(store.path)
    try:
        released = asyncio.ensure_future(release(client, held, "preempted"))
        await until(lambda: parked(client) == 0, 30, "the waiter to be woken")
        for _ in range(20):  # every chance to answer early
            await asyncio.sleep(0)
        assert not answer.done() and not released.done()  # both wait on the (held) commit
        gate.gate.set()
        status, grant = await asyncio.wait_for(answer, 30)
        assert status == 200 and grant["epoch"] == 2
        assert reader.execute("SELECT lease_worker FROM runs WHERE run_id = 'r1'").fetchone() == ("w2",)
        assert (await released)[0] == 200
    finally:
        gate.gate.set()
        reader.close()


async def test_renewals_and_other_runs_go_on_while_pods_wait(client: TestClient) -> None:
    _, held = await acquire(client, "r1", "w1")
    answers = [waiting_acquire(client, "r1", f"w{i}") for i in range(2, 30)]
    await wait_parked(client, 28)
    for _ in range(5):
        assert (await renew(client, held))[0] == 200
    status, other = await acquire(client, "r2", "w1")
    assert status == 200 and other["epoch"] == 1
    for a in answers:
        a.cancel()


def test_a_commander_shutting_down_answers_its_parked_acquires(commander_factory) -> None:
    """``relayctl serve`` on SIGTERM: every parked acquire is answered (as if its wait had ended) instead of
    holding the shutdown or being cut off."""
    cmd = commander_factory(lease_ttl_s=60.0)

    def post(body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"{cmd.url}/api/lease/acquire",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert post({"run_id": "r1", "worker_id": "w1"})[0] == 200
    answers: list[tuple[int, dict]] = []
    waiter = threading.Thread(
        target=lambda: answers.append(post({"run_id": "r1", "worker_id": "w2", "wait_s": 600}))
    )
    waiter.start()

    def parked_now() -> bool:
        with urllib.request.urlopen(f"{cmd.url}/metrics", timeout=5) as resp:
            return "relay_acquires_waiting 1.0" in resp.read().decode()

    wait_for(parked_now, 30, "the acquire to park")
    assert cmd.terminate(timeout_s=60) == 0
    waiter.join(60)
    assert answers and answers[0][0] == 409 and answers[0][1]["holder"] == "w1"


async def test_a_run_held_back_by_a_state_behind_is_granted_to_its_waiter_when_the_hold_ends(
    make_commander,
) -> None:
    """A remote ahead of the state holds the run's grants for the first TTL after start (no lease, so no
    release or expiry will come): the parked acquire asks again when that hold ends, not at wait_s."""
    client = await make_commander(lease_ttl_s=1.0, sweep_interval_s=3600)
    _, first = await acquire(client, "r1", "w1")
    status, _ = await release(client, first, "preempted", remote_epoch=7)
    assert status == 200
    status, grant = await asyncio.wait_for(acquire(client, "r1", "w2", wait_s=LONG), 30)
    assert status == 200, grant  # a wait that had run to LONG would have hit the 30 s above
    assert grant["epoch"] == 8 and 0 < grant["waited_s"] < LONG
