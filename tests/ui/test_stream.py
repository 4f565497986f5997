"""The dashboard's live stream and its submit action, over real HTTP against the commander app."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import DummyCookieJar

from relay.commander.ui.stream import appended
from relay.ctl.submit import SpecFileError, parse_spec
from tests.commander.calls import acquire, report
from tests.ui.web import open_session


@pytest.fixture
async def client(make_commander):
    """A commander without a secret (the lease calls below send none): a session comes with the first page."""
    return await make_commander(sweep_interval_s=0.1, client_options={"cookie_jar": DummyCookieJar()})


class Events:
    """Reads server-sent events from an open response, one ``(event, data)`` at a time."""

    def __init__(self, resp) -> None:
        self.resp = resp

    async def next(self, timeout: float = 10.0) -> tuple[str, dict]:
        async def read() -> tuple[str, dict]:
            name, data = None, None
            while True:
                line = (await self.resp.content.readline()).decode()
                if line == "":
                    raise EOFError("the stream ended")
                line = line.rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and name is not None:
                    return name, data

        return await asyncio.wait_for(read(), timeout)

    async def until(self, name: str, pred=lambda data: True, timeout: float = 10.0) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event, data = await self.next(max(0.1, deadline - loop.time()))
            if event == name and pred(data):
                return data


async def open_stream(client, me, run: str | None = None) -> Events:
    path = "/ui/api/stream" + (f"?run={run}" if run else "")
    resp = await client.get(path, headers=me.cookie)
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    return Events(resp)


async def test_the_runs_stream_sends_everything_then_only_changes(client):
    me = await open_session(client)
    await client.post("/api/runs", json={"run_id": "a"})
    events = await open_stream(client, me)
    first = await events.until("runs")
    assert first["full"] and [r["run_id"] for r in first["runs"]] == ["a"] and first["now"] > 0
    await client.post("/api/runs", json={"run_id": "b"})
    change = await events.until("runs", lambda d: d["runs"])
    assert not change["full"] and [r["run_id"] for r in change["runs"]] == ["b"]  # a did not change: not sent
    status, grant = await acquire(client, "a", "pod-1")
    assert status == 200
    change = await events.until("runs", lambda d: d["runs"])
    assert [(r["run_id"], r["status"], r["holder"], r["epoch"]) for r in change["runs"]] == [
        ("a", "running", "pod-1", 1)
    ]


async def test_a_run_page_stream_sends_the_detail_then_what_was_appended_and_the_logs(client):
    me = await open_session(client)
    status, grant = await acquire(client, "r1", "pod-1")
    events = await open_stream(client, me, "r1")
    first = await events.until("run")
    assert first["reset"] and first["detail"]["run_id"] == "r1" and first["detail"]["holder"] == "pod-1"
    assert [e["name"] for e in first["detail"]["events"]] == ["acquired"]
    line = {"ts": 1.0, "stream": "stdout", "line": "step 3 loss 1.5"}
    status, _ = await report(
        client, grant, "pod-1", step=3, metrics={"loss": 1.5}, event="trainer_started", log_tail=[line]
    )
    assert status == 200
    update = await events.until("run", lambda d: d["detail"]["step"] == 3)
    assert not update["reset"]
    assert [e["name"] for e in update["detail"]["events"]] == ["trainer_started"]  # only the new one
    assert [m["metrics"] for m in update["detail"]["metrics_history"]] == [{"loss": 1.5}]
    logs = await events.until("logs")
    assert [(e["line"], e["worker_id"], e["epoch"]) for e in logs["lines"]] == [
        ("step 3 loss 1.5", "pod-1", 1)
    ]
    assert [(lease["worker_id"], lease["ended"]) for lease in update["detail"]["leases"]] == [
        ("pod-1", "running")
    ]


async def test_a_reconnecting_run_page_gets_only_the_log_lines_it_has_not_shown(client):
    me = await open_session(client)
    status, grant = await acquire(client, "r2", "pod-1")
    lines = [{"ts": float(i), "stream": "stdout", "line": f"line {i}"} for i in range(3)]
    await report(client, grant, "pod-1", step=1, log_tail=lines)
    events = await open_stream(client, me, "r2")
    first = await events.until("logs")
    assert [entry["line"] for entry in first["lines"]] == ["line 0", "line 1", "line 2"]
    events.resp.close()  # the connection drops (a commander restart, a network blip)
    await report(client, grant, "pod-1", step=2, log_tail=[{"ts": 9.0, "stream": "stderr", "line": "line 3"}])
    path = "/ui/api/stream?run=r2"
    resp = await client.get(path, headers={**me.cookie, "Last-Event-ID": str(first["next_cursor"])})
    again = Events(resp)
    assert (await again.until("run"))["reset"]  # the detail comes whole: the page redraws it
    assert [entry["line"] for entry in (await again.until("logs"))["lines"]] == ["line 3"]


async def test_a_stream_for_a_run_that_does_not_exist_says_so_and_ends(client):
    me = await open_session(client)
    events = await open_stream(client, me, "nobody")
    assert await events.until("gone") == {"run_id": "nobody"}
    with pytest.raises(EOFError):
        await events.next()
    assert (await client.get("/ui/api/stream?run=../x", headers=me.cookie)).status == 400


def test_appended_finds_what_is_new_even_when_the_window_slides():
    assert appended([], [1, 2], 5) == [1, 2]
    assert appended([1, 2], [1, 2, 3], 5) == [3]
    assert appended([1, 2, 3], [2, 3, 4, 5], 4) == [4, 5]  # the window dropped 1
    assert appended([1, 2], [5, 6], 2) is None  # everything sent slid out: send the whole list again


SPEC_PROBLEMS = (
    "run_id: ../bad\npriority: high\ncolour: red\ntrain:\n  learning_rte: 1\n  save_steps: often\n"
)


async def test_submit_lists_every_problem_exactly_as_relayctl_submit_does(client):
    me = await open_session(client)
    headers = {**me.cookie, "X-CSRF-Token": me.csrf, "Content-Type": "application/yaml"}
    resp = await client.post("/ui/api/submit", data=SPEC_PROBLEMS.encode(), headers=headers)
    body = await resp.json()
    with pytest.raises(SpecFileError) as cli:
        parse_spec(SPEC_PROBLEMS, "spec")
    assert resp.status == 422 and body["problems"] == cli.value.problems
    keys = [p.split(":", 1)[0] for p in body["problems"]]
    assert keys == ["run_id", "priority", "colour", "train.learning_rte"], body["problems"]
    resp = await client.post("/ui/api/submit", data=b"run_id: ok-1\ntrain: {max_steps: 5}\n", headers=headers)
    assert resp.status == 201 and await resp.json() == {
        "run_id": "ok-1",
        "created": True,
        "status": "pending",
    }
    resp = await client.post("/ui/api/submit", data=b"run_id: ok-1\ntrain: {max_steps: 5}\n", headers=headers)
    assert resp.status == 200 and (await resp.json())["created"] is False
    resp = await client.post("/ui/api/submit", data=b"run_id: ok-1\ntrain: {max_steps: 6}\n", headers=headers)
    assert resp.status == 409 and "differs in: train" in (await resp.json())["problems"][0]
    own = b"run_id: own-1\ntrain: {slime_args: --tp 2}\n"
    resp = await client.post("/ui/api/submit", data=own, headers=headers)
    assert resp.status == 422 and "train.slime_args: unknown key" in (await resp.json())["problems"][0]
    resp = await client.post("/ui/api/submit?validate_train=0", data=own, headers=headers)
    assert resp.status == 201
    resp = await client.post("/ui/api/submit", data=b"\xff\xfe", headers=headers)
    assert resp.status == 422 and (await resp.json())["code"] == "bad_spec"
