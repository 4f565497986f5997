"""A trainer that speaks no relay protocol (no progress file: Megatron's own layout and log lines) under a
real worker and commander: never killed while healthy, even with a 2 s hang timeout; the step the
commander shows comes from its log lines; a trainer that really stops is still caught as hung."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from relay_testkit.wait import wait_for
from relay_testkit.workerproc import WorkerProc

ITERS = 12


def megatron_worker(tmp_path: Path, cmd: Any, *, seconds: float) -> WorkerProc:
    trainer = (
        f'exec {sys.executable} -m relay_testkit.fake_megatron --save "$RELAY_OUTPUT_DIR" --load "$RELAY_RESUME_FROM" '
        f"--train-iters {ITERS} --save-interval 5 --log-interval 1 --exit-signal-handler --seconds-per-iteration {seconds}"
    )
    return WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="meg",
        worker_id="pod",
        remote=(tmp_path / "remote").as_uri(),
        settings={"hang_timeout_s": 2, "startup_timeout_s": 2, "max_restarts": 0, "kill_grace_s": 0.5},
        env={"RELAY_TRAINER_CMD": trainer, "RELAY_TRAINER": "builtin"},
    )


def run_detail(cmd: Any) -> dict[str, Any]:
    """The run as the commander has it ({"step": 0} before a worker started it)."""
    try:
        with urllib.request.urlopen(f"{cmd.url}/api/runs/meg", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {"step": 0, "status": None}
        raise


def test_healthy_megatron_style_trainer_is_not_killed_and_its_step_is_shown(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=5.0)
    w = megatron_worker(tmp_path, cmd, seconds=0.25).start()  # 3 s of training, no progress file at all
    steps_seen: list[int] = []

    def watch() -> bool:
        steps_seen.append(run_detail(cmd)["step"])
        return w.proc is not None and w.proc.poll() is not None

    wait_for(watch, 60, "the run to end")
    assert w.wait(5) == 0, w.output()
    names = [e["event"] for e in w.events()]
    assert "hang_detected" not in names and names[-1] == "completed", names
    committed = [e["step"] for e in w.events() if e["event"] == "checkpoint_committed"]
    assert committed[-1] == ITERS and set(committed) <= {5, 10, ITERS}
    detail = run_detail(cmd)
    assert detail["status"] == "completed" and detail["step"] == ITERS
    assert any(0 < (s or 0) < ITERS for s in steps_seen), steps_seen  # the step moved while it trained
    assert any("loss" in m["metrics"] for m in detail["metrics_history"])  # Megatron's "lm loss"
    assert (
        tmp_path
        / "remote"
        / "meg"
        / "checkpoints"
        / f"step_{ITERS:08d}"
        / "latest_checkpointed_iteration.txt"
    ).is_file()


def test_a_stopped_trainer_is_still_caught_as_hung(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=5.0)
    w = megatron_worker(tmp_path, cmd, seconds=0.25).start()
    started = w.wait_event("trainer_started", timeout=30)
    wait_for(lambda: run_detail(cmd)["step"] >= 2, 30, "two iterations")
    os.kill(started["pid"], signal.SIGSTOP)  # really stopped: no output, no checkpoint
    t0 = time.monotonic()
    assert w.wait(60) != 0  # max_restarts 0: the hang fails the run
    hang = [e for e in w.events() if e["event"] == "hang_detected"]
    assert len(hang) == 1 and hang[0]["limit_s"] == 2, w.events()
    assert time.monotonic() - t0 < 30
    assert run_detail(cmd)["status"] == "failed"
