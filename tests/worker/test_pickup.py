"""Instant pickup: a waiting worker is woken by the commander (long-polled acquire), never by its own
polling.  Each worker here has an acquire backoff of 300 s, far beyond every wait in the test, so only
the commander's answer to a parked acquire can hand it the run: a release, an expiry, a submit.  A
SIGTERM ends a wait at once; against a commander without long polls the worker falls back to backoff.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError, create_model

from relay.commander.answers import validation_error
from relay.commander.app import create_app
from relay.schema import AcquireRequest
from relay_testkit.threaded_app import ThreadedApp
from relay_testkit.wait import wait_for
from relay_testkit.workerproc import WorkerProc

TTL = 3.0
NO_POLLING = {"acquire_backoff_s": 300, "acquire_backoff_max_s": 300}
TRAIN = {"max_steps": 100_000, "save_steps": 5, "step_seconds": 0.02}


def parked(url: str) -> int:
    """Long-polled acquires the commander holds now (its Prometheus gauge)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^relay_acquires_waiting (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


def wait_parked(url: str, n: int = 1) -> None:
    wait_for(lambda: parked(url) == n, 60, f"{n} parked acquire(s) at the commander")


def run_detail(url: str, run_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/runs/{run_id}", timeout=5) as resp:
        return json.loads(resp.read())


def holder(cmd_url: str, pod: str, remote: str | None, root: Path, **settings: Any) -> WorkerProc:
    return WorkerProc(
        root / pod,
        commander_url=cmd_url,
        run_id="relay",
        worker_id=pod,
        remote=remote,
        train=TRAIN,
        settings=settings,
    )


def test_a_release_wakes_the_waiting_pod(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    remote = f"file://{tmp_path / 'remote'}"
    a = holder(cmd.url, "pod-a", remote, tmp_path).start()
    a.wait_event("checkpoint_synced", 60)
    b = holder(cmd.url, "pod-b", remote, tmp_path, **NO_POLLING).start()
    wait_parked(cmd.url)
    a.send(signal.SIGTERM)
    assert a.wait(60) == 0, a.output()
    final = a.wait_event("preempted")["checkpoint_step"]
    acquired = b.wait_event("acquired", 60)
    assert acquired["epoch"] == 2
    resumed = b.wait_event("resumed", 60)
    assert (resumed["step"], resumed["source"]) == (final, "remote")
    b.wait_event("trainer_started", 60)
    b.send(signal.SIGTERM)
    assert b.wait(60) == 0, b.output()


def test_an_expiry_wakes_the_waiting_pod_after_a_hard_kill(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    a = holder(cmd.url, "pod-a", None, tmp_path).start()
    a.wait_event("trainer_started", 60)
    b = holder(cmd.url, "pod-b", None, tmp_path, **NO_POLLING).start()
    wait_parked(cmd.url)
    a.kill()  # kill -9: no release; the lease must expire
    acquired = b.wait_event("acquired", 60)
    assert acquired["epoch"] == 2
    names = [e["name"] for e in run_detail(cmd.url, "relay")["events"]]
    assert "lease_expired" in names
    b.wait_event("trainer_started", 60)
    b.send(signal.SIGTERM)
    assert b.wait(60) == 0, b.output()
    # it waited longer than the TTL for this grant: its lease deadline counts from the grant, not the ask
    assert "fenced" not in [e["event"] for e in b.events()]


def test_a_submit_wakes_an_idle_pool_pod(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    pool = WorkerProc(
        tmp_path / "pool",
        commander_url=cmd.url,
        run_id=None,
        worker_id="pool-1",
        settings={"idle_exit_s": -1, **NO_POLLING},
    ).start()
    wait_parked(cmd.url)
    body = json.dumps({"run_id": "job-1", "mode": "sft", "train": {"max_steps": 5, "step_seconds": 0.01}})
    req = urllib.request.Request(
        f"{cmd.url}/api/runs", data=body.encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 201
    pool.wait_event("completed", 60, run_id="job-1")
    wait_for(lambda: run_detail(cmd.url, "job-1")["status"] == "completed", 30, "job-1 completed")
    pool.send(signal.SIGTERM)
    assert pool.wait(60) == 0, pool.output()


def test_sigterm_ends_a_wait_at_once(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    a = holder(cmd.url, "pod-a", None, tmp_path).start()
    a.wait_event("trainer_started", 60)
    b = holder(cmd.url, "pod-b", None, tmp_path, acquire_wait_s=600, **NO_POLLING).start()
    wait_parked(cmd.url)
    b.send(signal.SIGTERM)
    assert b.wait(60) == 0, b.output()  # long before its 600 s poll or 300 s backoff would end
    assert "SIGTERM before a run was acquired" in b.output()
    wait_parked(cmd.url, 0)  # the commander let go of the parked acquire too
    assert run_detail(cmd.url, "relay")["holder"] == "pod-a"
    a.send(signal.SIGTERM)
    assert a.wait(60) == 0


# --------------------------------------------------------------------------- an older commander

#: the acquire body of a commander from before long polls: no wait_s field (unknown fields are a 422)
OldAcquire = create_model(
    "OldAcquire",
    __base__=AcquireRequest.__base__,
    **{name: (f.annotation, f) for name, f in AcquireRequest.model_fields.items() if name != "wait_s"},
)


@web.middleware
async def before_long_polls(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answers an acquire as a commander that predates ``wait_s`` does: 422 naming the field."""
    if request.path == "/api/lease/acquire":
        try:
            OldAcquire.model_validate_json(await request.read())
        except ValidationError as exc:
            return validation_error(exc)
    return await handler(request)


class OldCommander(ThreadedApp):
    """The real commander app behind :func:`before_long_polls`, built on its server thread (SQLite)."""

    def __init__(self, state: Path) -> None:
        super().__init__(web.Application(), name="old-commander")
        self.state = state

    async def _start_site(self) -> None:
        self.app = create_app(self.state, lease_ttl_s=TTL)
        self.app.middlewares.append(before_long_polls)
        await super()._start_site()


def test_an_older_commander_without_long_polls_still_hands_the_run_over(tmp_path: Path) -> None:
    server = OldCommander(tmp_path / "old.db").start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        a = holder(url, "pod-a", None, tmp_path).start()
        a.wait_event("trainer_started", 60)
        b = holder(url, "pod-b", None, tmp_path).start()  # the test default: 0.1-0.3 s backoff
        wait_for(lambda: "no long poll" in b.output(), 60, "pod-b to fall back to polling", b.proc)
        a.send(signal.SIGTERM)
        assert a.wait(60) == 0, a.output()
        assert b.wait_event("acquired", 60)["epoch"] == 2
        b.send(signal.SIGTERM)
        assert b.wait(60) == 0, b.output()
    finally:
        server.stop()
