"""Run callbacks against a real local HTTP receiver: content, order, auth, retries, restarts, secrecy."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from relay.commander.callbacks import CallbackSettings, auth_header_pair
from relay.commander.config import CommanderConfigError, load_commander_config
from relay_testkit.wait import until
from tests.commander.calls import acquire, closed_port, get_run, lease_body, release, report
from tests.jobs.calls import FAST, spec, submit
from tests.jobs.receiver import Receiver

SECRET_HEADER = "Bearer cb-secret-7f3a9c"


def with_callbacks(run_id: str, url: str, **callbacks) -> dict:
    return spec(run_id, callbacks={"webhook_url": url, "auth_header": SECRET_HEADER, **callbacks})


async def test_every_status_change_and_synced_checkpoint_is_posted_in_order(commander, receiver):
    await submit(commander, with_callbacks("j1", receiver.url))
    _, grant = await acquire(commander, None)
    ckpt = {"step": 4, "path": "/vol/step_4", "remote_revision": "abc"}
    await report(
        commander,
        grant,
        step=4,
        metrics={"loss": 0.5},
        checkpoint=ckpt,
        remote_step=4,
        event="checkpoint_synced",
    )
    await release(commander, grant, "preempted", detail="SIGTERM")
    _, grant = await acquire(commander, None, worker_id="w2")
    await release(commander, grant, "completed", worker_id="w2", detail="done")
    await until(lambda: len(receiver.received) == 6, what="six callbacks")
    bodies = [r.body for r in receiver.received]
    assert [b["event"] for b in bodies] == [
        "pending",
        "running",
        "checkpoint_synced",
        "preempted",
        "running",
        "completed",
    ]
    assert [b["epoch"] for b in bodies] == [0, 1, 1, 1, 2, 2]
    synced = bodies[2]
    assert synced["status"] == "running" and synced["step"] == 4 and synced["remote_step"] == 4
    assert synced["metrics"] == {"loss": 0.5} and synced["latest_checkpoint"] == ckpt
    assert bodies[3]["detail"] == "SIGTERM" and bodies[5]["detail"] == "done"
    assert bodies[5]["metrics"] == {"loss": 0.5}  # the last reported metrics ride along
    assert all(
        set(b) >= {"run_id", "status", "epoch", "step", "detail", "metrics", "latest_checkpoint", "timestamp"}
        for b in bodies
    )
    for r in receiver.received:
        assert r.headers["Authorization"] == SECRET_HEADER
        assert r.headers["Content-Type"] == "application/json"
    delivery_ids = [int(r.headers["X-Relay-Delivery"]) for r in receiver.received]
    assert delivery_ids == sorted(set(delivery_ids))
    detail = (await get_run(commander, "j1"))["callbacks"]
    assert detail["delivered"] == 6 and detail["pending"] == 0 and detail["last_status"] == 200
    assert detail["last_error"] is None and detail["last_delivery_at"] is not None


async def test_cancel_and_events_filter_and_name_value_header(commander, receiver):
    await submit(
        commander,
        spec(
            "f",
            callbacks={
                "webhook_url": receiver.url,
                "auth_header": "X-Api-Key: k-123",
                "events": ["cancelled"],
            },
        ),
    )
    _, grant = await acquire(commander, None)
    assert (await commander.post("/api/runs/f/cancel")).status == 200  # flags the running run
    await submit(commander, with_callbacks("g", receiver.url))
    assert (await commander.post("/api/runs/g/cancel")).status == 200  # cancels the pending one at once
    await until(lambda: receiver.events("g") == ["pending", "cancelled"], what="g cancelled")
    await release(commander, grant, "cancelled")
    await until(lambda: receiver.events("f") == ["cancelled"], what="f cancelled")
    hook = next(r for r in receiver.received if r.body["run_id"] == "f")
    assert hook.headers["X-Api-Key"] == "k-123" and "Authorization" not in hook.headers


def test_auth_header_forms():
    assert auth_header_pair("Bearer abc") == ("Authorization", "Bearer abc")
    assert auth_header_pair("Basic dXNlcjpwYXNz") == ("Authorization", "Basic dXNlcjpwYXNz")
    assert auth_header_pair("X-Api-Key: abc:def") == ("X-Api-Key", "abc:def")
    assert auth_header_pair("Bearer a:b") == ("Authorization", "Bearer a:b")  # a space: not a header name
    assert auth_header_pair("Empty:   ") == ("Authorization", "Empty:   ")


async def test_a_failing_receiver_is_retried_with_backoff_and_recovers(commander, receiver):
    receiver.failing = True
    await submit(commander, with_callbacks("j1", receiver.url))
    _, grant = await acquire(commander, None)
    await until(lambda: receiver.attempts >= 3, what="three attempts")
    detail = (await get_run(commander, "j1"))["callbacks"]
    assert detail["pending"] == 2 and detail["delivered"] == 0
    assert detail["last_status"] == 500 and detail["last_error"] == "HTTP 500"
    assert detail["next_attempt_at"] is not None
    # lease calls go on as usual while deliveries fail
    assert (await commander.post("/api/lease/renew", json=lease_body(grant))).status == 200
    receiver.failing = False
    await until(lambda: receiver.events() == ["pending", "running"], what="recovery")
    detail = (await get_run(commander, "j1"))["callbacks"]
    assert detail["pending"] == 0 and detail["delivered"] == 2 and detail["last_error"] is None


async def callbacks_of(commander, run_id: str = "j1") -> dict:
    return (await get_run(commander, run_id))["callbacks"]


async def test_connection_refused_then_the_receiver_comes_up(commander):
    port = closed_port()
    await submit(commander, with_callbacks("j1", f"http://127.0.0.1:{port}/hook"))

    async def failed() -> dict | None:
        detail = await callbacks_of(commander)
        return detail if detail["last_error"] else None

    detail = await until(failed, what="a failed attempt")
    assert "cannot connect" in detail["last_error"] and detail["last_status"] is None
    assert detail["pending"] == 1
    with Receiver(port=port) as late:
        await until(lambda: late.events() == ["pending"], what="late delivery")


async def test_deliveries_are_dropped_after_max_attempts_and_the_next_one_goes(make_commander, receiver):
    commander = await make_commander(callbacks=FAST.model_copy(update={"max_attempts": 2}))
    receiver.failing = True
    await submit(commander, with_callbacks("j1", receiver.url))

    async def dropped() -> dict | None:
        detail = await callbacks_of(commander)
        return detail if detail["dropped"] else None

    detail = await until(dropped, what="a dropped delivery")
    assert detail["pending"] == 0 and receiver.attempts == 2 and detail["last_error"] == "HTTP 500"
    receiver.failing = False
    await acquire(commander, None)
    await until(lambda: receiver.events() == ["running"], what="the next callback")
    detail = await callbacks_of(commander)
    assert detail["dropped"] == 1 and detail["delivered"] == 1


async def test_heartbeats_while_running_and_none_after(make_commander, receiver):
    commander = await make_commander(callbacks=FAST.model_copy(update={"interval_s": 0.2}))
    await submit(commander, with_callbacks("hb", receiver.url))
    _, grant = await acquire(commander, None)
    await report(commander, grant, step=7, metrics={"loss": 0.25})
    await until(lambda: receiver.events().count("heartbeat") >= 2, what="two heartbeats")
    beat = next(r.body for r in receiver.received if r.body["event"] == "heartbeat")
    assert beat["status"] == "running" and beat["step"] == 7 and beat["metrics"] == {"loss": 0.25}
    await release(commander, grant, "completed")
    await until(lambda: receiver.events()[-1] == "completed", what="completed")
    settled = len(receiver.received)
    await asyncio.sleep(0.6)  # three heartbeat periods: none may come for a finished run
    assert len(receiver.received) == settled


async def test_a_hanging_receiver_never_slows_lease_calls(make_commander, receiver):
    commander = await make_commander(callbacks=FAST.model_copy(update={"timeout_s": 5}))
    receiver.delay_s = 2.0
    await submit(commander, with_callbacks("slow", receiver.url))
    await until(lambda: receiver.attempts >= 1, what="a delivery in flight")
    started = time.monotonic()
    _, grant = await acquire(commander, None)
    for _ in range(5):
        assert (await commander.post("/api/lease/renew", json=lease_body(grant))).status == 200
    assert (await release(commander, grant, "completed"))[0] == 200
    assert time.monotonic() - started < 1.0


async def test_the_auth_header_never_shows_in_answers_or_logs(commander, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    secret = SECRET_HEADER.split()[1]
    receiver.failing = True
    status, created = await submit(commander, with_callbacks("s1", receiver.url))
    assert created["spec"]["callbacks"]["auth_header"] == "***"
    _, grant = await acquire(commander, None)
    assert grant["spec"]["callbacks"]["auth_header"] == "***"
    await until(lambda: receiver.attempts >= 2, what="failing attempts")
    answers = [str(created), str(grant)]
    for path in ("/api/runs", "/api/runs/s1", "/api/runs/s1/logs", "/metrics", "/api/openapi.json"):
        answers.append(await (await commander.get(path)).text())
    answers.append(str((await submit(commander, with_callbacks("s1", receiver.url)))[1]))  # idempotent answer
    answers.append(str((await submit(commander, {**with_callbacks("s1", receiver.url), "priority": 1}))[1]))
    assert all(secret not in a for a in answers)
    assert "***" in answers[3]
    assert secret not in caplog.text and "callback pending of run s1" in caplog.text


def test_settings_from_the_environment():
    def from_env(env: dict[str, str]) -> CallbackSettings:
        return load_commander_config(env=env).callbacks

    settings = from_env({"RELAY_CALLBACK_INTERVAL_S": "2.5", "RELAY_CALLBACK_MAX_ATTEMPTS": "4"})
    assert settings.interval_s == 2.5 and settings.max_attempts == 4 and settings.deliver
    assert not from_env({"RELAY_CALLBACK_DELIVER": "0"}).deliver
    assert from_env({"RELAY_CALLBACK_DELIVER": "yes"}).deliver
    for env, message in (
        (
            {"RELAY_CALLBACK_INTERVAL_S": "soon"},
            "RELAY_CALLBACK_INTERVAL_S must be a number of seconds (got 'soon')",
        ),
        (
            {"RELAY_CALLBACK_TIMEOUT_S": "-1"},
            "RELAY_CALLBACK_TIMEOUT_S: input should be greater than 0 (got '-1')",
        ),
        (
            {"RELAY_CALLBACK_MAX_ATTEMPTS": "2.5"},
            "RELAY_CALLBACK_MAX_ATTEMPTS must be a whole number (got '2.5')",
        ),
        ({"RELAY_CALLBACK_BACKOFF_S": "inf"}, "RELAY_CALLBACK_BACKOFF_S must be a finite number of seconds"),
        ({"RELAY_CALLBACK_DELIVER": "maybe"}, "RELAY_CALLBACK_DELIVER must be true or false"),
    ):
        with pytest.raises(CommanderConfigError) as info:
            from_env(env)
        assert message in str(info.value) and "\n" not in str(info.value), info.value


def test_pending_deliveries_survive_kill_9_of_the_commander(tmp_path, commander_factory):
    """Queued while the receiver is down, kept across kill -9, sent once the commander is back."""
    import json
    import urllib.request

    port = closed_port()
    env = {
        **os.environ,
        # a long backoff: without the restart nothing would be retried within this test
        "RELAY_CALLBACK_BACKOFF_S": "60",
        "RELAY_CALLBACK_BACKOFF_MAX_S": "600",
    }
    cmd = commander_factory(env=env, extra_args=["--log-level", "DEBUG"])

    def call(method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            cmd.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    call("POST", "/api/runs", with_callbacks("kept", f"http://127.0.0.1:{port}/hook"))
    grant = call("POST", "/api/lease/acquire", {"worker_id": "w1"})
    call("POST", "/api/lease/release", {**lease_body(grant), "outcome": "completed"})
    deadline = time.monotonic() + 10
    while call("GET", "/api/runs/kept")["callbacks"]["last_error"] is None:
        assert time.monotonic() < deadline, cmd.output()
        time.sleep(0.05)
    assert call("GET", "/api/runs/kept")["callbacks"]["pending"] == 3
    cmd.kill()
    with Receiver(port=port) as receiver:
        cmd.start()
        receiver.wait_for(lambda: receiver.events() == ["pending", "running", "completed"])
        assert all(r.headers["Authorization"] == SECRET_HEADER for r in receiver.received)
        receiver.wait_for(lambda: call("GET", "/api/runs/kept")["callbacks"]["pending"] == 0)
    output = cmd.output()
    assert "callback pending of run kept" in output  # the failed attempt was logged...
    assert SECRET_HEADER.split()[1] not in output  # ...without the secret
