"""POST /api/runs: create, idempotency, conflicts, validation, and handing runs out by priority."""

from __future__ import annotations

import pytest

from relay.client import BadRequest, CommanderClient, NoWaitingRun, SpecConflict
from relay.commander.openapi import build_openapi
from relay.schema import AcquireRequest, RunSpec
from tests.commander.calls import acquire, get_run, release
from tests.jobs.calls import spec, submit


async def test_submit_creates_a_pending_run_and_the_same_spec_again_is_idempotent(commander):
    status, run = await submit(commander, spec("j1", priority=3, max_restarts=2))
    assert status == 201
    assert run["run_id"] == "j1" and run["status"] == "pending" and run["epoch"] == 0
    assert run["priority"] == 3 and run["max_restarts"] == 2 and run["restarts"] == 0
    assert run["spec"]["train"] == {"max_steps": 4} and run["mode"] == "sft"
    assert [e["name"] for e in run["events"]] == ["submitted"]

    status, again = await submit(commander, spec("j1", priority=3, max_restarts=2))
    assert status == 200 and again["run_id"] == "j1" and again["created_at"] == run["created_at"]
    # the defaults are part of the spec: writing them out is the same spec
    status, _ = await submit(
        commander, {**spec("j1", priority=3, max_restarts=2), "remote": None, "callbacks": None}
    )
    assert status == 200
    runs = (await (await commander.get("/api/runs")).json())["runs"]
    assert [r["run_id"] for r in runs] == ["j1"]


async def test_a_different_spec_for_an_existing_run_is_a_conflict_naming_what_differs(commander):
    assert (await submit(commander, spec("j1")))[0] == 201
    status, err = await submit(commander, spec("j1", priority=9, train={"max_steps": 5}))
    assert status == 409 and err["code"] == "spec_conflict" and err["field"] == "run_id"
    assert err["detail"]["differs"] == ["priority", "train"]
    assert "different spec" in err["error"]
    assert (await get_run(commander, "j1"))["priority"] == 0  # unchanged


async def test_a_run_started_by_a_worker_cannot_be_taken_over_by_a_submit(commander):
    assert (await acquire(commander, "byid"))[0] == 200
    status, err = await submit(commander, spec("byid"))
    assert status == 409 and err["code"] == "spec_conflict" and "not submitted" in err["error"]


async def test_a_spec_without_run_id_gets_a_generated_one(commander):
    status, first = await submit(commander, spec(None))
    status2, second = await submit(commander, spec(None))
    assert status == status2 == 201
    assert first["run_id"].startswith("run-") and first["run_id"] != second["run_id"]
    assert first["spec"]["run_id"] == first["run_id"]


@pytest.mark.parametrize(
    ("body", "http", "field", "words"),
    [
        ({"callbacks": {"webhook_url": "ftp://example.com/x"}}, 422, "callbacks.webhook_url", "http"),
        ({"callbacks": {"webhook_url": "file:///etc/passwd"}}, 422, "callbacks.webhook_url", "http"),
        ({"callbacks": {"webhook_url": "http://"}}, 422, "callbacks.webhook_url", "host"),
        (
            {"callbacks": {"webhook_url": "http://h/x", "auth_header": "a\r\nX-Evil: 1"}},
            422,
            "callbacks.auth_header",
            "one line",
        ),
        ({"callbacks": {"webhook_url": "http://h/x", "events": ["exploded"]}}, 422, "callbacks.events.0", ""),
        ({"callbacks": {"webhook_url": "http://h/x", "bogus": 1}}, 422, "callbacks.bogus", "unknown field"),
        ({"run_id": "../etc"}, 400, "run_id", "invalid id"),
        ({"run_id": ".."}, 400, "run_id", "invalid id"),
        ({"run_id": "a" * 129}, 400, "run_id", "invalid id"),
        ({"bogus_key": 1}, 422, "bogus_key", "unknown field"),
        ({"mode": "pretrain"}, 422, "mode", ""),
        ({"priority": "high"}, 422, "priority", ""),
        ({"max_restarts": -1}, 422, "max_restarts", ""),
        ({"max_duration_s": 0}, 422, "max_duration_s", ""),
        ({"remote": "s3://bucket/x"}, 422, "remote", "hf://"),
        ({"train": ["not", "a", "mapping"]}, 422, "train", ""),
    ],
)
async def test_invalid_specs_are_refused_naming_the_field(commander, body, http, field, words):
    status, err = await submit(commander, {**spec("bad"), **body})
    assert status == http, err
    assert err["field"] == field and words in err["error"]
    assert (await commander.get("/api/runs/bad")).status in (400, 404)  # nothing was created


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ('"max_duration_s": NaN', "max_duration_s", "finite"),
        ('"max_duration_s": Infinity', "max_duration_s", "finite"),
        ('"max_duration_s": 1e400', "max_duration_s", "finite"),  # the JSON parser reads it as inf
        ('"train": {"learning_rate": NaN}', "train", "train.learning_rate"),
        ('"train": {"opt": {"betas": [0.9, -Infinity]}}', "train", "train.opt.betas[1]"),
        ('"train": {"warmup": 1e400}', "train", "train.warmup"),
    ],
)
async def test_non_finite_numbers_in_a_spec_are_422_naming_the_path(commander, raw, field, words):
    body = '{"run_id": "nan", "mode": "sft", ' + raw + "}"
    resp = await commander.post("/api/runs", data=body, headers={"Content-Type": "application/json"})
    err = await resp.json()
    assert resp.status == 422 and err["field"] == field and words in err["error"], err
    assert (await commander.get("/api/runs/nan")).status == 404  # nothing was created


async def test_malformed_json_is_a_400(commander):
    resp = await commander.post("/api/runs", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["code"] == "malformed_json"


async def test_workers_without_run_id_get_the_highest_priority_then_oldest_run_with_its_spec(commander):
    for run_id, priority, mode in (
        ("low", 0, "sft"),
        ("high-1", 5, "sft"),
        ("rl-top", 9, "rl"),
        ("high-2", 5, "sft"),
    ):
        assert (await submit(commander, spec(run_id, priority=priority, mode=mode)))[0] == 201
    order = []
    for i in range(3):
        status, grant = await acquire(commander, None, worker_id=f"w{i}", mode="sft")
        assert status == 200, grant
        order.append(grant["run_id"])
        assert grant["spec"]["run_id"] == grant["run_id"] and grant["spec"]["train"] == {"max_steps": 4}
    assert order == ["high-1", "high-2", "low"]
    status, err = await acquire(commander, None, worker_id="w9", mode="sft")
    assert status == 404 and err["code"] == "no_waiting_run"  # the rl run does not fit an sft worker
    status, grant = await acquire(commander, None, worker_id="w-rl", mode="rl")
    assert status == 200 and grant["run_id"] == "rl-top" and grant["spec"]["mode"] == "rl"


async def test_a_preempted_run_goes_back_in_line_by_priority(commander):
    await submit(commander, spec("a", priority=1))
    await submit(commander, spec("b", priority=2))
    _, grant_b = await acquire(commander, None, worker_id="w1")
    assert grant_b["run_id"] == "b"
    assert (await release(commander, grant_b, "preempted"))[0] == 200
    _, again = await acquire(commander, None, worker_id="w2")
    assert again["run_id"] == "b" and again["epoch"] == 2


async def test_client_submit_run_and_spec_conflict(commander):
    url = str(commander.make_url("")).rstrip("/")
    async with CommanderClient(url) as client:
        run, created = await client.submit_run(RunSpec(run_id="c1", priority=4, train={"lr": 0.1}))
        assert created and run.run_id == "c1" and run.priority == 4 and run.spec is not None
        run, created = await client.submit_run(RunSpec(run_id="c1", priority=4, train={"lr": 0.1}))
        assert not created and run.run_id == "c1"
        with pytest.raises(SpecConflict) as conflict:
            await client.submit_run(RunSpec(run_id="c1", priority=5, train={"lr": 0.1}))
        assert conflict.value.differs == ["priority"] and "c1" in str(conflict.value)
        grant = await client.acquire(AcquireRequest(worker_id="w1"))
        assert grant.run_id == "c1" and grant.spec is not None and grant.spec.train == {"lr": 0.1}
        with pytest.raises(NoWaitingRun):
            await client.acquire(AcquireRequest(worker_id="w2"))
        with pytest.raises(BadRequest):
            await client.get_logs("..")


def test_openapi_documents_the_job_endpoints():
    doc = build_openapi()
    submit_op = doc["paths"]["/api/runs"]["post"]
    assert submit_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RunSpec")
    assert {"200", "201", "409", "422"} <= set(submit_op["responses"])
    logs_op = doc["paths"]["/api/runs/{run_id}/logs"]["get"]
    assert {p["name"] for p in logs_op["parameters"]} == {"run_id", "since", "limit", "tail"}
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    callback = doc["components"]["schemas"]["CallbackSpec"]["properties"]
    assert callback["webhook_url"]["pattern"].startswith("^https?://")
    hook = doc["webhooks"]["runCallback"]["post"]
    assert hook["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CallbackPayload")
