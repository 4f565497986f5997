"""Epochs never go backwards against storage (issue 13, point 5): a release that reports the epoch the
run's remote holds makes the next grant jump past it, durably; a remote epoch no grant can exceed
ends the run ``failed`` with its reason instead of a loop of grants the remote refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.client import CommanderClient, RunClosed
from relay.commander.lease_rules import MAX_EPOCH
from relay.ids import INT64_MAX
from relay.schema import AcquireRequest, RunStatus
from relay_testkit.wait import until
from tests.commander.calls import acquire, get_run, release


async def granted(client, run_id: str, worker_id: str) -> dict:
    """Acquire until granted (a run found behind waits out the first TTL after start)."""

    async def ask():
        status, body = await acquire(client, run_id, worker_id)
        return body if status == 200 else None

    return await until(ask, 15, f"{run_id} to be granted to {worker_id}")


async def test_the_next_grant_jumps_past_the_remote_epoch_and_remembers_it_across_a_restart(
    make_commander, tmp_path: Path
):
    state = tmp_path / "floor.db"
    client = await make_commander(state=state, lease_ttl_s=1.0)
    _, first = await acquire(client, "r1", "w1")
    assert first["epoch"] == 1  # a commander that lost its state starts again at 1 ...
    status, body = await release(client, first, "preempted", remote_epoch=7)  # ... the remote is at 7
    assert (status, body["status"]) == (200, "preempted"), body
    # a holder of epoch 7 may still be alive: nothing is granted until a TTL after the commander started
    status, held = await acquire(client, "r1", "w2")
    if status == 409:
        assert held["holder"] is None and held["retry_after_s"] > 0 and "above the one" in held["detail"], (
            held
        )
    second = await granted(client, "r1", "w2")
    assert second["epoch"] == 8
    events = [e for e in (await get_run(client))["events"] if e["name"] == "acquired"]
    assert "past epoch 7" in events[-1]["message"]
    # a lower remote epoch than the floor changes nothing; the floor survives a restart
    assert (await release(client, second, "preempted", "w2", remote_epoch=3))[0] == 200
    await client.close()
    client = await make_commander(state=state)
    _, third = await acquire(client, "r1", "w3")
    assert third["epoch"] == 9


async def test_a_remote_epoch_at_the_bound_fails_the_run_once_with_its_reason(make_commander):
    client = await make_commander()
    _, grant = await acquire(client, "r1", "w1")
    status, body = await release(client, grant, "preempted", remote_epoch=MAX_EPOCH)
    assert (status, body["status"]) == (200, "failed"), body
    detail = await get_run(client)
    assert detail["status"] == "failed" and str(MAX_EPOCH) in detail["detail"]
    assert "cannot be granted again" in detail["detail"] and "new run id" in detail["detail"]
    assert detail["events"][-1]["name"] == "failed" and str(MAX_EPOCH) in detail["events"][-1]["message"]
    # asking again by id is refused with the same reason, and nothing is granted
    status, denied = await acquire(client, "r1", "w2")
    assert status == 409 and denied["status"] == "failed" and denied["holder"] is None, denied
    assert str(MAX_EPOCH) in denied["detail"]
    assert (await acquire(client, None, "w3"))[0] == 404  # never handed out as a waiting run either
    assert (await get_run(client))["epoch"] == 1


async def test_a_failed_release_with_restarts_left_is_not_requeued_when_the_epoch_is_exhausted(
    make_commander,
):
    client = await make_commander()
    spec = {"run_id": "job", "mode": "sft", "train": {"max_steps": 5}, "max_restarts": 3}
    assert (await client.post("/api/runs", json=spec)).status == 201
    _, grant = await acquire(client, "job", "w1")
    status, body = await release(client, grant, "failed", remote_epoch=INT64_MAX)
    assert (status, body["status"]) == (200, "failed"), body
    assert (await get_run(client, "job"))["restarts"] == 0


async def test_a_cancel_still_wins_over_an_exhausted_epoch(make_commander):
    client = await make_commander()
    _, grant = await acquire(client, "r1", "w1")
    assert (await client.post("/api/runs/r1/cancel")).status == 200
    status, body = await release(client, grant, "preempted", remote_epoch=MAX_EPOCH)
    assert (status, body["status"]) == (200, "cancelled")


async def test_the_remote_epoch_just_below_the_bound_is_still_granted(make_commander):
    client = await make_commander(lease_ttl_s=1.0)
    _, grant = await acquire(client, "r1", "w1")
    assert (await release(client, grant, "preempted", remote_epoch=MAX_EPOCH - 1))[0] == 200
    last = await granted(client, "r1", "w2")
    assert last["epoch"] == MAX_EPOCH


@pytest.mark.parametrize("value", [-1, INT64_MAX + 1, "7", 7.5])
async def test_a_bad_remote_epoch_is_a_422_naming_the_field(make_commander, value):
    client = await make_commander()
    _, grant = await acquire(client, "r1", "w1")
    status, body = await release(client, grant, "preempted", remote_epoch=value)
    assert status == 422 and body["field"] == "remote_epoch", body
    assert (await get_run(client))["holder"] == "w1"


async def test_the_client_reads_the_refusal_as_a_closed_run_naming_the_reason(make_commander):
    client = await make_commander()
    _, grant = await acquire(client, "r1", "w1")
    assert (await release(client, grant, "preempted", remote_epoch=MAX_EPOCH))[0] == 200
    async with CommanderClient(str(client.make_url(""))) as c:
        with pytest.raises(RunClosed) as refused:
            await c.acquire(AcquireRequest(run_id="r1", worker_id="w2"))
    assert refused.value.status is RunStatus.failed and str(MAX_EPOCH) in str(refused.value)
