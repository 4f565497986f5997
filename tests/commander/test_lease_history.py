"""The lease history (one entry per epoch in GET /api/runs/{run_id}) and the commander's lease events.

Each way a lease can end is driven over HTTP: released with each outcome, expired, replaced by the
same worker's new grant (fenced).  A holder that lost its lease and calls again is recorded once as
``fenced``; a request that never held that lease, or a straggler behind its own release, is not.
"""

from __future__ import annotations

import pytest

from relay_testkit.wait import until
from tests.commander.calls import acquire, get_run, release, renew, report


def ends(detail: dict) -> list[tuple[int, str, str]]:
    return [(lease["epoch"], lease["worker_id"], lease["ended"]) for lease in detail["leases"]]


@pytest.mark.parametrize("outcome", ["preempted", "completed", "failed", "cancelled"])
async def test_a_released_lease_ends_with_its_outcome(client, outcome):
    _, grant = await acquire(client, "r1", "w1")
    detail = await get_run(client)
    [live] = detail["leases"]
    assert (live["epoch"], live["worker_id"], live["ended"], live["ended_at"]) == (1, "w1", "running", None)
    assert live["granted_at"] == pytest.approx(detail["events"][0]["ts"])
    await report(client, grant, step=5)
    await report(client, grant, step=9)
    status, _ = await release(client, grant, outcome, step=12)
    assert status == 200
    detail = await get_run(client)
    [ended] = detail["leases"]
    assert ended["ended"] == outcome and ended["ended_at"] >= ended["granted_at"]
    assert (ended["first_step"], ended["last_step"]) == (5, 12)  # the release's step is its last word
    last = detail["events"][-1]
    assert last["worker_id"] == "w1" and last["message"].startswith(f"released as {outcome}")


async def test_history_across_epochs_expiry_replacement_and_resume_steps(make_commander):
    client = await make_commander(lease_ttl_s=1.0, sweep_interval_s=0.05)
    _, first = await acquire(client, "r1", "w1")
    await report(client, first, step=0)  # a report before the worker knew where it resumes
    await report(client, first, step=40, event="resumed", message="step=40 source=remote")
    await report(client, first, step=57)

    async def expired():
        return (await get_run(client))["leases"][0]["ended"] == "expired"

    await until(expired, what="the lease of epoch 1 to expire")
    _, second = await acquire(client, "r1", "w2")  # epoch 2
    status, _ = await report(client, second, "w2", step=50, event="resumed")
    assert status == 200
    held = {"lease_id": second["lease_id"], "epoch": second["epoch"]}
    _, third = await acquire(client, "r1", "w2", held_lease=held)  # w2 restarted: epoch 3 replaces 2
    status, _ = await release(client, third, "completed", "w2", step=80)
    assert status == 200
    detail = await get_run(client)
    assert ends(detail) == [(1, "w1", "expired"), (2, "w2", "fenced"), (3, "w2", "completed")]
    steps = [(lease["first_step"], lease["last_step"]) for lease in detail["leases"]]
    assert steps == [(40, 57), (50, 50), (80, 80)]  # first: where it resumed; 57 - 50 steps were redone
    ended = [lease["ended_at"] for lease in detail["leases"]]
    granted = [lease["granted_at"] for lease in detail["leases"]]
    assert ended[0] <= granted[1] and ended[1] == pytest.approx(granted[2])
    names = [(e["name"], e["epoch"]) for e in detail["events"]]
    assert names == [
        ("acquired", 1),
        ("resumed", 1),
        ("lease_expired", 1),
        ("acquired", 2),
        ("resumed", 2),
        ("acquired", 3),
        ("completed", 3),
    ]
    # ?leases=N keeps the newest N, oldest first
    resp = await client.get("/api/runs/r1", params={"leases": "2"})
    assert [lease["epoch"] for lease in (await resp.json())["leases"]] == [2, 3]
    assert (await client.get("/api/runs/r1", params={"leases": "0"})).status == 400


async def test_the_holder_of_a_lost_lease_is_recorded_as_fenced_once(make_commander):
    client = await make_commander(lease_ttl_s=1.0, sweep_interval_s=0.05)
    _, old = await acquire(client, "r1", "w1")

    async def taken():
        status, body = await acquire(client, "r1", "w2")
        return body if status == 200 else None

    new = await until(taken, what="w2 to be granted the run after w1's lease expired")
    # a forged or mistyped request that never held epoch 1 is refused and not recorded
    for forged in ({"lease_id": "0" * 32}, {"worker_id": "w3"}):
        status, body = await renew(client, {**old, **forged}, forged.get("worker_id", "w1"))
        assert (status, body["code"]) == (409, "stale_lease")
    assert [e["name"] for e in (await get_run(client))["events"]][-1] == "acquired"
    # the real old holder: fenced, once, however many of its calls arrive
    for call in (renew(client, old), report(client, old, step=3), release(client, old, "preempted")):
        status, body = await call
        assert (status, body["code"]) == (409, "stale_lease"), body
    detail = await get_run(client)
    fenced = [e for e in detail["events"] if e["name"] == "fenced"]
    assert [(e["epoch"], e["worker_id"]) for e in fenced] == [(1, "w1")]
    assert fenced[0]["message"].startswith("renew refused: lease for run r1 is no longer current")
    assert "held by worker w2 at epoch 2" in fenced[0]["message"]
    assert detail["leases"][0]["fenced_at"] == pytest.approx(fenced[0]["ts"])
    assert detail["leases"][1]["fenced_at"] is None and new["epoch"] == 2


async def test_a_straggler_behind_its_own_release_is_not_fenced(client):
    """A renew in flight while the holder released is refused, but the holder gave the lease back."""
    _, grant = await acquire(client)
    await release(client, grant, "preempted")
    status, body = await renew(client, grant)
    assert (status, body["code"]) == (409, "stale_lease")
    detail = await get_run(client)
    assert "fenced" not in [e["name"] for e in detail["events"]]
    assert detail["leases"][0]["fenced_at"] is None


async def test_the_history_survives_a_commander_restart(make_commander, tmp_path):
    state = tmp_path / "kept.db"
    first = await make_commander(state=state)
    _, grant = await acquire(first, "r1", "w1")
    await report(first, grant, step=7)
    await first.close()
    second = await make_commander(state=state)
    detail = await get_run(second)
    assert ends(detail) == [(1, "w1", "running")]
    assert detail["leases"][0]["last_step"] == 7
    # the restored lease is the same lease: its holder renews it and releases it
    assert (await renew(second, grant))[0] == 200
    assert (await release(second, grant, "completed"))[0] == 200
    assert ends(await get_run(second)) == [(1, "w1", "completed")]
