"""The run-status table, walked fully: every allowed edge driven over HTTP, every other one refused."""

from __future__ import annotations

import itertools
import time

import pytest

from relay.commander import runs
from relay.commander.store import RunRow
from relay.schema import ReleaseOutcome, RunStatus
from tests.commander.calls import acquire, get_run, leases_of, release, renew, report

S = RunStatus
ALL_EDGES = {(a, b) for a, targets in runs.TRANSITIONS.items() for b in targets}


async def into(client, status: RunStatus, run_id: str) -> dict | None:
    """Put a fresh run ``run_id`` into ``status``; returns the last grant (None for pending)."""
    if status is S.pending:  # only a submit creates pending runs over HTTP: seed the store
        now = time.time()
        leases_of(client).store.save_run(
            RunRow(run_id=run_id, status=S.pending, created_at=now, updated_at=now)
        )
        return None
    code, grant = await acquire(client, run_id, "w1")
    assert code == 200, grant
    if status is not S.running:
        code, body = await release(client, grant, status.value)
        assert (code, body["status"]) == (200, status.value)
    return grant


async def _acquire_by_other(client, run_id, grant):
    code, body = await acquire(client, run_id, "w2")
    assert code == 200, body


async def _acquire_by_same(client, run_id, grant):
    held = {"lease_id": grant["lease_id"], "epoch": grant["epoch"]}  # a restarted worker shows its lease
    code, body = await acquire(client, run_id, "w1", held_lease=held)
    assert code == 200 and body["epoch"] == grant["epoch"] + 1, body


async def _cancel(client, run_id, grant):
    resp = await client.post(f"/api/runs/{run_id}/cancel")
    assert resp.status == 200, await resp.text()


def _release(outcome: str):
    async def drive(client, run_id, grant):
        code, body = await release(client, grant, outcome)
        assert code == 200, body

    return drive


#: (from, to) -> how the API makes that edge happen.
EDGE_DRIVERS = {
    (S.pending, S.running): _acquire_by_other,
    (S.pending, S.cancelled): _cancel,
    (S.running, S.running): _acquire_by_same,
    (S.running, S.preempted): _release("preempted"),
    (S.running, S.completed): _release("completed"),
    (S.running, S.failed): _release("failed"),
    (S.running, S.cancelled): _release("cancelled"),
    (S.preempted, S.running): _acquire_by_other,
    (S.preempted, S.cancelled): _cancel,
    (S.failed, S.running): _acquire_by_other,
    (S.failed, S.cancelled): _cancel,
}


def test_every_edge_of_the_table_has_a_driver_and_a_reason():
    assert set(EDGE_DRIVERS) == ALL_EDGES
    assert set(runs.TRANSITIONS) == set(RunStatus)
    assert all(reason for targets in runs.TRANSITIONS.values() for reason in targets.values())


@pytest.mark.parametrize(
    "edge",
    sorted(EDGE_DRIVERS, key=lambda e: (e[0].value, e[1].value)),
    ids=lambda e: f"{e[0].value}->{e[1].value}",
)
async def test_allowed_edge_over_http(client, edge):
    source, target = edge
    grant = await into(client, source, "r")
    assert (await get_run(client, "r"))["status"] == source.value
    await EDGE_DRIVERS[edge](client, "r", grant)
    assert (await get_run(client, "r"))["status"] == target.value


@pytest.mark.parametrize(
    "pair",
    [p for p in itertools.product(RunStatus, RunStatus) if p not in ALL_EDGES],
    ids=lambda p: f"{p[0].value}->{p[1].value}",
)
def test_every_other_edge_is_refused(pair):
    source, target = pair
    assert not runs.can_transition(source, target)
    with pytest.raises(runs.TransitionError):
        runs.transition(source, target)


@pytest.mark.parametrize("closed", [S.completed, S.cancelled])
async def test_closed_runs_refuse_every_change_over_http(client, closed):
    grant = await into(client, closed, "r")
    before = await get_run(client, "r")
    code, body = await acquire(client, "r", "w2")
    assert code == 409 and body["status"] == closed.value
    assert (await acquire(client, "r", "w1"))[0] == 409
    assert (await acquire(client, None, "w3"))[0] == 404
    assert (await renew(client, grant))[0] == 409
    assert (await report(client, grant, step=1))[0] == 409
    # The very lease that closed the run, released again: the idempotent answer, not a change...
    code, body = await release(client, grant, closed.value)
    assert (code, body["status"]) == (200, closed.value)
    # ...unless it asks for another outcome: refused, naming the one recorded.
    code, body = await release(client, grant, "preempted")
    assert code == 409 and body["status"] == closed.value and f"released as {closed.value}" in body["error"]
    cancel = await client.post("/api/runs/r/cancel")
    assert cancel.status == (200 if closed is S.cancelled else 409)
    after = await get_run(client, "r")
    assert (after["status"], after["epoch"], after["events"]) == (
        before["status"],
        before["epoch"],
        before["events"],
    )


async def test_pending_run_cannot_be_renewed_reported_or_released(client):
    await into(client, S.pending, "r")
    fake = {"run_id": "r", "lease_id": "0" * 32, "epoch": 0}
    assert (await renew(client, fake))[0] == 409
    assert (await report(client, fake, step=1))[0] == 409
    assert (await release(client, fake, "completed"))[0] == 409
    assert (await get_run(client, "r"))["status"] == "pending"


def test_release_rules():
    for outcome in ReleaseOutcome:
        assert runs.status_after_release(outcome, cancel_requested=False).value == outcome.value
        expected = S.completed if outcome is ReleaseOutcome.completed else S.cancelled
        assert runs.status_after_release(outcome, cancel_requested=True) is expected
    assert runs.status_after_expiry(cancel_requested=False) is S.preempted
    assert runs.status_after_expiry(cancel_requested=True) is S.cancelled
    assert runs.status_after_cancel(S.running) is None
    for waiting in (S.pending, S.preempted, S.failed):
        assert runs.status_after_cancel(waiting) is S.cancelled
    for closed in (S.completed, S.cancelled):
        with pytest.raises(runs.TransitionError):
            runs.status_after_cancel(closed)
