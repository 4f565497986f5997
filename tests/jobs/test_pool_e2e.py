"""End to end: submitted specs, a real `relayctl serve`, a real pool worker (no RUN_ID) with the mock trainer.

The worker's own TRAIN says "train forever, slowly": every run finishing with the steps its spec asked
for proves that the spec in the grant, not the pod's config, decides what is trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from relay_testkit.commander_proc import REPO_ROOT
from relay_testkit.workerproc import WorkerProc, step_counts
from tests.jobs.receiver import Receiver


def call(url: str, method: str, path: str, body: dict | None = None) -> Any:
    req = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def job(run_id: str, priority: int, steps: int, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "priority": priority,
        "train": {"max_steps": steps, "save_steps": 2, "step_seconds": 0.01, **extra.pop("train", {})},
        **extra,
    }


def test_a_pool_worker_drains_submitted_runs_by_priority(tmp_path: Path, commander_factory: Any) -> None:
    with Receiver() as receiver:
        cmd = commander_factory(lease_ttl_s=3.0)
        remote = f"file://{tmp_path / 'remote'}"
        call(cmd.url, "POST", "/api/runs", job("low", 0, 4))
        call(
            cmd.url,
            "POST",
            "/api/runs",
            job(
                "high-a",
                5,
                6,
                remote=remote,
                callbacks={"webhook_url": receiver.url, "auth_header": "Bearer t0k"},
            ),
        )
        call(cmd.url, "POST", "/api/runs", job("high-b", 5, 3))
        # the last one in line crashes every time: it may restart once, in all
        call(cmd.url, "POST", "/api/runs", job("crashy", -1, 10, max_restarts=1, train={"crash_at_step": 2}))

        follow = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "logs", "high-a", "-f", "--interval", "0.1"],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COMMANDER_URL": cmd.url},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            worker = WorkerProc(
                tmp_path / "pod",
                commander_url=cmd.url,
                run_id=None,
                worker_id="pool",
                train={"max_steps": 100000, "step_seconds": 0.5},
            ).start()
            assert worker.wait(90) == 0, worker.output()
            followed_out, followed_err = follow.communicate(timeout=20)
        finally:
            follow.kill()

        # priority first, then the oldest; each run trained exactly what its spec said
        started = {run: worker.events(run)[0]["ts"] for run in ("high-a", "high-b", "low", "crashy")}
        assert sorted(started, key=started.__getitem__) == ["high-a", "high-b", "low", "crashy"]
        for run_id, steps in (("high-a", 6), ("high-b", 3), ("low", 4)):
            assert step_counts(worker.mock_log(run_id)) == {s: 1 for s in range(1, steps + 1)}, run_id
            assert call(cmd.url, "GET", f"/api/runs/{run_id}")["status"] == "completed"

        # max_restarts bounds the restarts in all: one trainer restart on the pod, then failed for good
        crashy = call(cmd.url, "GET", "/api/runs/crashy")
        assert crashy["status"] == "failed" and crashy["restarts"] == 1, crashy
        assert [e["event"] for e in worker.events("crashy")].count("trainer_started") == 2

        # the log timeline, from the API and followed by `relayctl logs -f` until the run completed
        page = call(cmd.url, "GET", "/api/runs/high-a/logs")
        texts = [line["line"] for line in page["lines"]]
        assert any("mock_trainer: exit 0 at step 6" in t for t in texts), texts
        assert any(line["stream"] == "worker" and "trainer started" in line["line"] for line in page["lines"])
        assert "mock_trainer: exit 0 at step 6" in followed_out
        assert follow.returncode == 0 and "run high-a is completed" in followed_err

        # callbacks of the real run: in order, with the synced checkpoints, ending completed
        receiver.wait_for(lambda: "completed" in receiver.events("high-a"))
        events = receiver.events("high-a")
        assert events[:2] == ["pending", "running"] and events[-1] == "completed", events
        assert "checkpoint_synced" in events
        final = receiver.received[-1].body
        assert final["step"] == 6 and final["latest_checkpoint"]["step"] == 6 and final["remote_step"] == 6
        assert all(r.headers["Authorization"] == "Bearer t0k" for r in receiver.received)
