"""Lease rules over real HTTP against the commander app: grant, deny, renew, expiry, fencing, release, report."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from tests.commander.calls import acquire, get_run, release, renew, report


async def poll(predicate, timeout_s: float = 5.0, interval_s: float = 0.02):
    """Await ``predicate()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(interval_s)


async def test_grant_then_deny_another_worker(client):
    status, grant = await acquire(client, "r1", "w1", mode="sft")
    assert status == 200, grant
    assert grant["granted"] is True and grant["run_id"] == "r1" and grant["epoch"] == 1
    assert grant["ttl_s"] == 60.0 and math.isclose(grant["renew_interval_s"], 20.0)
    assert len(grant["lease_id"]) >= 16
    assert grant["run"]["status"] == "running" and grant["run"]["holder"] == "w1"
    assert grant["run"]["mode"] == "sft" and grant["spec"] is None

    status, denied = await acquire(client, "r1", "w2")
    assert status == 409
    assert denied["granted"] is False and denied["holder"] == "w1" and denied["status"] == "running"
    assert 55 < denied["retry_after_s"] <= 60
    detail = await get_run(client)
    assert detail["epoch"] == 1 and detail["holder"] == "w1"
    assert [e["name"] for e in detail["events"]] == ["acquired"]


async def test_renew_extends_the_lease(client):
    _, grant = await acquire(client)
    status, body = await renew(client, grant)
    assert status == 200
    assert body == {"ok": True, "ttl_s": 60.0, "cancel_requested": False}
    after = await get_run(client)
    assert after["last_renew_age_s"] is not None and after["last_renew_age_s"] < 5


async def test_renewing_keeps_a_lease_alive_well_past_its_ttl(make_commander):
    ttl = 0.4
    client = await make_commander(lease_ttl_s=ttl)
    _, grant = await acquire(client)
    started = time.monotonic()
    while time.monotonic() - started < 3 * ttl:
        status, body = await renew(client, grant)
        assert status == 200, body
        await asyncio.sleep(ttl / 4)
    status, denied = await acquire(client, "r1", "w2")
    assert status == 409 and denied["holder"] == "w1"
    assert ttl / 2 < denied["retry_after_s"] <= ttl


async def test_expiry_then_regrant_with_higher_epoch(make_commander):
    client = await make_commander(lease_ttl_s=0.3)
    _, first = await acquire(client, "r1", "w1")
    status, _ = await report(client, first, step=7)
    assert status == 200

    async def w2_granted():
        status, body = await acquire(client, "r1", "w2")
        return body if status == 200 else None

    second = await poll(w2_granted)
    assert second["epoch"] == 2 and second["run"]["holder"] == "w2"
    assert second["run"]["step"] == 7  # progress survives the hand-over

    # The old holder is fenced off everywhere, and changes nothing but the record of it: one "fenced"
    # event for its epoch, however often it calls.
    for status, body in (
        await renew(client, first),
        await report(client, first, step=99),
        await release(client, first, "completed"),
    ):
        assert status == 409 and body["code"] == "stale_lease", body
    detail = await get_run(client)
    assert detail["status"] == "running" and detail["epoch"] == 2 and detail["holder"] == "w2"
    assert detail["step"] == 7
    names = [(e["name"], e["epoch"], e["worker_id"]) for e in detail["events"]]
    assert names == [
        ("acquired", 1, "w1"),
        ("lease_expired", 1, "w1"),
        ("acquired", 2, "w2"),
        ("fenced", 1, "w1"),
    ]
    assert detail["events"][-1]["message"].startswith("renew refused: lease for run r1 is no longer current")
    epochs = [(lease["epoch"], lease["worker_id"], lease["ended"]) for lease in detail["leases"]]
    assert epochs == [(1, "w1", "expired"), (2, "w2", "running")]
    assert detail["leases"][0]["fenced_at"] >= detail["leases"][0]["ended_at"]


async def test_expired_lease_is_dead_even_if_nobody_took_the_run(make_commander):
    client = await make_commander(lease_ttl_s=0.2)
    _, grant = await acquire(client)

    async def expired():
        return (await get_run(client))["holder"] is None

    await poll(expired)
    status, body = await renew(client, grant)
    assert status == 409 and body["code"] == "stale_lease"
    detail = await get_run(client)
    assert detail["status"] == "preempted" and "expired" in detail["detail"]


async def test_sweeper_marks_expired_runs_preempted_without_any_request(make_commander):
    client = await make_commander(lease_ttl_s=0.2, sweep_interval_s=0.05)
    await acquire(client)

    async def preempted():
        return (await get_run(client))["status"] == "preempted"

    await poll(preempted)


async def test_stale_lease_requests_get_409_and_change_nothing(client):
    _, old = await acquire(client, "r1", "w1")
    assert (await release(client, old, "preempted"))[0] == 200
    _, new = await acquire(client, "r1", "w2")
    assert new["epoch"] == 2
    await report(client, new, "w2", step=3, checkpoint={"step": 3, "path": "/c/3"})
    before = await get_run(client)

    variants = [
        ("w1", {}),  # the old holder, its own old lease
        ("w2", {"epoch": 1}),  # right worker, old epoch
        ("w2", {"lease_id": old["lease_id"]}),  # right epoch, wrong lease id
        ("w1", {"lease_id": new["lease_id"], "epoch": 2}),  # the new lease, wrong worker
    ]
    for worker, override in variants:
        stale = {**old, **override} if worker == "w1" else {**new, **override}
        status, body = await renew(client, stale, worker)
        assert (status, body["code"]) == (409, "stale_lease"), (worker, override, body)
        status, body = await report(
            client,
            stale,
            worker,
            step=50,
            checkpoint={"step": 50, "path": "/x"},
            event="completed",
            metrics={"loss": 1.0},
        )
        assert (status, body["code"]) == (409, "stale_lease"), (worker, override, body)
        status, body = await release(client, stale, "completed", worker)
        assert (status, body["code"]) == (409, "stale_lease"), (worker, override, body)

    after = await get_run(client)
    for key in ("status", "epoch", "holder", "step", "latest_checkpoint", "events", "metrics_history"):
        assert after[key] == before[key], key
    assert (await renew(client, new, "w2"))[0] == 200


async def test_preempted_release_makes_the_run_available_at_once(client):
    _, grant = await acquire(client, "r1", "w1")
    await report(
        client, grant, step=40, checkpoint={"step": 40, "path": "/ckpt/40", "remote_revision": "abc"}
    )
    status, body = await release(client, grant, "preempted", detail="spot reclaim")
    assert (status, body) == (200, {"ok": True, "status": "preempted"})
    status, second = await acquire(client, "r1", "w2")
    assert status == 200 and second["epoch"] == 2
    assert second["run"]["latest_checkpoint"] == {"step": 40, "path": "/ckpt/40", "remote_revision": "abc"}


async def test_a_release_carries_the_holders_last_word_when_its_final_report_was_lost(client):
    _, grant = await acquire(client, "r1", "w1")
    await report(client, grant, step=30, checkpoint={"step": 30, "path": "/ckpt/30"}, remote_step=30)
    status, _ = await release(
        client,
        grant,
        "completed",
        step=50,
        checkpoint={"step": 50, "path": "/ckpt/50", "remote_revision": "r7"},
        remote_step=50,
    )
    assert status == 200
    run = await get_run(client, "r1")
    assert run["status"] == "completed" and run["step"] == 50 and run["remote_step"] == 50
    assert run["latest_checkpoint"] == {"step": 50, "path": "/ckpt/50", "remote_revision": "r7"}
    # a release without them changes nothing of the progress
    _, grant = await acquire(client, "r2", "w1")
    await report(client, grant, step=7, checkpoint={"step": 5, "path": "/ckpt/5"})
    await release(client, grant, "preempted")
    run = await get_run(client, "r2")
    assert run["step"] == 7 and run["latest_checkpoint"]["step"] == 5


async def test_release_outcomes_and_regrant_rules(client):
    for run_id, outcome, regrant in (
        ("done", "completed", False),
        ("bad", "failed", True),
        ("stop", "cancelled", False),
    ):
        _, grant = await acquire(client, run_id, "w1")
        status, body = await release(client, grant, outcome)
        assert (status, body["status"]) == (200, outcome)
        status, answer = await acquire(client, run_id, "w2")
        if regrant:
            assert status == 200 and answer["epoch"] == 2
        else:
            assert status == 409 and answer["granted"] is False
            assert answer["status"] == outcome and answer["holder"] is None


async def test_release_retry_of_the_same_lease_is_idempotent(client):
    _, grant = await acquire(client)
    first = await release(client, grant, "completed")
    again = await release(client, grant, "completed")
    assert first == again == (200, {"ok": True, "status": "completed"})


@pytest.mark.parametrize(("first", "second"), [("completed", "failed"), ("preempted", "completed")])
async def test_a_retried_release_with_another_outcome_is_409_naming_the_recorded_one(client, first, second):
    _, grant = await acquire(client)
    status, body = await release(client, grant, first)
    assert status == 200
    recorded = body["status"]
    status, body = await release(client, grant, second)
    assert status == 409 and body["code"] == "stale_lease", body
    assert f"already released as {first}" in body["error"] and body["detail"]["recorded_outcome"] == first
    assert (await get_run(client))["status"] == recorded  # the first release stands
    assert await release(client, grant, first) == (200, {"ok": True, "status": recorded})  # same: still 200


async def test_a_retried_release_survives_a_commander_restart(make_commander, tmp_path):
    state = tmp_path / "restart.db"
    client = await make_commander(state=state)
    _, grant = await acquire(client)
    assert (await release(client, grant, "completed"))[0] == 200
    await client.close()
    client = await make_commander(state=state)
    assert (await release(client, grant, "completed"))[0] == 200
    assert (await release(client, grant, "cancelled"))[0] == 409


async def test_a_worker_id_alone_does_not_take_a_live_lease_back(client):
    """Two processes with one WORKER_ID: the second waits for the lease like anyone else (issue 13)."""
    _, old = await acquire(client, "r1", "w1")
    status, denied = await acquire(client, "r1", "w1")
    assert status == 409 and denied["holder"] == "w1" and 55 < denied["retry_after_s"] <= 60
    assert "this worker id" in denied["detail"] and "WORKER_ID" in denied["detail"]
    wrong = {"lease_id": "f" * 32, "epoch": old["epoch"]}
    assert (await acquire(client, "r1", "w1", held_lease=wrong))[0] == 409
    older = {"lease_id": old["lease_id"], "epoch": old["epoch"] - 1}
    assert (await acquire(client, "r1", "w1", held_lease=older))[0] == 409
    assert (await renew(client, old))[0] == 200  # the live holder was never disturbed
    assert (await get_run(client))["epoch"] == 1


async def test_a_restarted_worker_showing_its_lease_fences_its_previous_incarnation(client):
    _, old = await acquire(client, "r1", "w1")
    held = {"lease_id": old["lease_id"], "epoch": old["epoch"]}
    status, new = await acquire(client, "r1", "w1", held_lease=held)
    assert status == 200 and new["epoch"] == 2 and new["lease_id"] != old["lease_id"]
    assert (await renew(client, old))[0] == 409
    assert (await renew(client, new))[0] == 200
    # the proof is spent: showing it again takes nothing
    assert (await acquire(client, "r1", "w1", held_lease=held))[0] == 409
    assert (await acquire(client, "r1", "w2", held_lease=held))[0] == 409  # nor for another worker id


async def test_acquire_without_run_id_hands_out_the_oldest_waiting_run_of_the_mode(client):
    status, body = await acquire(client, None, "w1")
    assert status == 404 and body["code"] == "no_waiting_run"

    async def make(run_id: str, mode: str, outcome: str | None) -> None:
        _, grant = await acquire(client, run_id, "seed", mode=mode)
        if outcome:
            assert (await release(client, grant, outcome, "seed"))[0] == 200

    await make("a-first", "sft", "preempted")
    await make("b-second", "sft", "preempted")
    await make("c-rl", "rl", "preempted")
    await make("d-done", "sft", "completed")
    await make("e-failed", "sft", "failed")
    await make("f-running", "sft", None)

    handed = []
    for worker in ("p1", "p2", "p3"):
        status, grant = await acquire(client, None, worker, mode="sft")
        if status != 200:
            assert status == 404 and grant["code"] == "no_waiting_run"
            break
        assert grant["run"]["holder"] == worker
        handed.append(grant["run_id"])
    assert handed == ["a-first", "b-second"]
    status, grant = await acquire(client, None, "p4")  # no mode: any mode fits
    assert status == 200 and grant["run_id"] == "c-rl"
    assert (await acquire(client, None, "p5"))[0] == 404


async def test_acquire_without_run_id_picks_up_a_run_whose_holder_vanished(make_commander):
    client = await make_commander(lease_ttl_s=0.2)
    await acquire(client, "orphan", "dead-pod")

    async def picked():
        status, body = await acquire(client, None, "new-pod")
        return body if status == 200 else None

    grant = await poll(picked)
    assert grant["run_id"] == "orphan" and grant["epoch"] == 2


async def test_mode_mismatch_for_an_explicit_run_is_422_naming_mode(client):
    _, grant = await acquire(client, "r1", "w1", mode="sft")
    await release(client, grant, "preempted")
    status, body = await acquire(client, "r1", "w2", mode="rl")
    assert status == 422 and body["field"] == "mode" and body["code"] == "mode_mismatch"


async def test_report_records_progress_metrics_checkpoint_and_events(client):
    _, grant = await acquire(client)
    status, body = await report(
        client,
        grant,
        step=12,
        metrics={"loss": 0.5, "lr": 1e-4},
        checkpoint={"step": 10, "path": "/runs/r1/ckpt/step_00000010"},
        remote_step=8,
        event="checkpoint_committed",
        message="step 10 committed",
        log_tail=[{"ts": 1.0, "stream": "stdout", "line": "hello"}],
    )
    assert (status, body) == (200, {"ok": True})
    await report(client, grant, step=13, metrics={"loss": 0.4})
    detail = await get_run(client)
    assert detail["step"] == 13 and detail["remote_step"] == 8
    assert detail["latest_checkpoint"] == {
        "step": 10,
        "path": "/runs/r1/ckpt/step_00000010",
        "remote_revision": None,
    }
    event = detail["events"][-1]
    assert (event["name"], event["message"], event["worker_id"], event["epoch"]) == (
        "checkpoint_committed",
        "step 10 committed",
        "w1",
        1,
    )
    assert [(m["step"], m["metrics"]) for m in detail["metrics_history"]] == [
        (12, {"loss": 0.5, "lr": 1e-4}),
        (13, {"loss": 0.4}),
    ]


async def test_report_with_a_nan_loss_is_kept_and_answered_as_null(client):
    _, grant = await acquire(client)
    body = {
        "worker_id": "w1",
        "lease_id": grant["lease_id"],
        "epoch": 1,
        "step": 1,
        "metrics": {"loss": math.nan},
    }
    resp = await client.post("/api/runs/r1/report", data=json.dumps(body))  # Python's json writes NaN
    assert resp.status == 200, await resp.text()
    assert (await get_run(client))["metrics_history"][-1]["metrics"] == {"loss": None}


async def test_cancel_running_run_reaches_the_holder_on_renew(client):
    _, grant = await acquire(client)
    resp = await client.post("/api/runs/r1/cancel")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "running" and body["cancel_requested"] is True
    status, renewed = await renew(client, grant)
    assert status == 200 and renewed["cancel_requested"] is True
    # The holder stops; even a "preempted" release ends the run as cancelled.
    status, released = await release(client, grant, "preempted")
    assert released["status"] == "cancelled"
    status, denied = await acquire(client, "r1", "w2")
    assert status == 409 and denied["status"] == "cancelled"
    names = [e["name"] for e in (await get_run(client))["events"]]
    assert names == ["acquired", "cancel_requested", "cancelled"]


async def test_cancel_waiting_closed_and_unknown_runs(client):
    _, grant = await acquire(client, "waiting")
    await release(client, grant, "preempted")
    resp = await client.post("/api/runs/waiting/cancel")
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    resp = await client.post("/api/runs/waiting/cancel")  # again: idempotent
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"

    _, grant = await acquire(client, "done")
    await release(client, grant, "completed")
    resp = await client.post("/api/runs/done/cancel")
    body = await resp.json()
    assert resp.status == 409 and body["code"] == "run_closed" and body["status"] == "completed"

    resp = await client.post("/api/runs/nope/cancel")
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"
    resp = await client.get("/api/runs/nope")
    assert resp.status == 404


async def test_many_concurrent_acquires_for_one_run_grant_exactly_one(client):
    answers = await asyncio.gather(*(acquire(client, "contested", f"w{i}") for i in range(60)))
    granted = [body for status, body in answers if status == 200]
    denied = [body for status, body in answers if status == 409]
    assert len(granted) == 1 and len(denied) == 59
    winner = granted[0]["run"]["holder"]
    assert all(d["holder"] == winner for d in denied)
    detail = await get_run(client, "contested")
    assert detail["epoch"] == 1 and [e["name"] for e in detail["events"]] == ["acquired"]


async def test_list_runs_and_detail_fields(client):
    _, grant = await acquire(client, "r1", "w1", mode="rl")
    await acquire(client, "r2", "w2")
    resp = await client.get("/api/runs")
    body = await resp.json()
    assert resp.status == 200 and abs(body["now"] - time.time()) < 5
    assert [r["run_id"] for r in body["runs"]] == ["r1", "r2"]
    r1 = body["runs"][0]
    assert (r1["status"], r1["epoch"], r1["holder"], r1["mode"]) == ("running", 1, "w1", "rl")
    assert r1["lease_expires_at"] > time.time() + 50
    resp = await client.get("/api/runs/r1?events=1&metrics=1")
    assert resp.status == 200 and len((await resp.json())["events"]) == 1
    for bad in ("events=0", "events=abc", "metrics=100000"):
        resp = await client.get(f"/api/runs/r1?{bad}")
        assert resp.status == 400 and (await resp.json())["field"] == bad.split("=")[0]


async def test_state_survives_an_app_restart_in_process(make_commander, tmp_path):
    state = tmp_path / "restart.db"
    first = await make_commander(state=state)
    _, grant = await acquire(first, "r1", "w1")
    await report(first, grant, step=5, event="trainer_started")
    await first.close()  # runs the app's cleanup: closes the store and its lock

    second = await make_commander(state=state)
    assert (await renew(second, grant))[0] == 200  # same lease, still current
    status, denied = await acquire(second, "r1", "w2")
    assert status == 409 and denied["holder"] == "w1"
    detail = await get_run(second)
    assert detail["step"] == 5 and [e["name"] for e in detail["events"]] == ["acquired", "trainer_started"]


async def test_expired_lease_cannot_report_or_release_either(make_commander):
    client = await make_commander(lease_ttl_s=0.2)
    _, grant = await acquire(client)
    await report(client, grant, step=3)

    async def expired():
        return (await get_run(client))["holder"] is None

    await poll(expired)
    status, body = await report(client, grant, step=9, checkpoint={"step": 9, "path": "/late"})
    assert (status, body["code"]) == (409, "stale_lease")
    status, body = await release(client, grant, "completed")
    assert (status, body["code"]) == (409, "stale_lease")
    detail = await get_run(client)
    assert (detail["status"], detail["step"], detail["latest_checkpoint"]) == ("preempted", 3, None)
