"""Third-party trainers carried by two real workers, end to end: a commander subprocess, worker
subprocesses on separate volumes, a file:// remote, and LLaMA-Factory / ``trl sft`` / a user's Trainer
script named by RELAY_TRAINER_CMD and nothing else.

Pod A cold-starts the run; a SIGTERM to its worker at a step (held there by the test plugin) is saved by
the trainer, committed, synced and released as preempted: 0 steps lost.  Pod B, on an empty volume,
pulls that checkpoint from the remote, resumes, finishes, and publishes the trainer's final export before
releasing the run as completed.  ``startup_timeout_s`` and ``hang_timeout_s`` are a few seconds and
``max_restarts`` 0: a healthy run killed as hung would fail the test.  The commander's final step is the
trainer's, and the published weights equal those of a bare run of the same command.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from relay_testkit.third_party import Recipe, base_env, kill_group, max_weight_diff, start, tail
from relay_testkit.trainer_env import PLUGINS_DIR
from relay_testkit.trainer_recipes import STEPS
from relay_testkit.wait import wait_for
from relay_testkit.workerproc import REPO_ROOT, WorkerProc

TTL = 10.0
STOP_AT = 4
RUN = "byo"


def worker(tmp_path: Path, cmd: Any, name: str, recipe: Recipe, *, pause_at: int | None = None) -> WorkerProc:
    env = base_env()
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(PLUGINS_DIR)]),
        RELAY_TRAINER="builtin",
        RELAY_TRAINER_CMD=recipe.shell(),
    )
    if pause_at is not None:
        env.update(RELAY_INJECT_PLUGINS="relay_test_pause", RELAY_TEST_PAUSE_AT_STEP=str(pause_at))
    settings = {
        "hang_timeout_s": 5,
        "startup_timeout_s": 5,
        "max_restarts": 0,  # a healthy run killed as hung would fail the run
        "grace_s": 90,
        "report_interval_s": 0.5,
    }
    return WorkerProc(
        tmp_path / name,
        commander_url=cmd.url,
        run_id=RUN,
        worker_id=name,
        remote=(tmp_path / "remote").as_uri(),
        settings=settings,
        env=env,
    )


def trained(w: WorkerProc) -> list[int]:
    return [x["step"] for x in w.progress() if x.get("heartbeat") is not True]


def relay_e2e(tmp_path: Path, cmd: Any, recipe: Recipe) -> dict[str, Any]:
    bare = start(recipe.command, base_env(), tmp_path / "bare", tmp_path / "bare.log")
    a = worker(tmp_path, cmd, "pod-a", recipe, pause_at=STOP_AT).start()
    t0 = time.monotonic()
    try:
        wait_for(
            lambda: any(s >= STOP_AT for s in trained(a)), 240, f"pod-a's trainer at step {STOP_AT}", a.proc
        )
        a.send(signal.SIGTERM)  # a preemption: the worker forwards it to the trainer's process group
        assert a.wait(120) == 0, a.output()
        a_wall = time.monotonic() - t0
        b = worker(tmp_path, cmd, "pod-b", recipe).start()
        t1 = time.monotonic()
        assert b.wait(240) == 0, b.output() + tail(b.run_dir() / "logs" / "trainer.log")
        b_wall = time.monotonic() - t1
        assert bare.wait(timeout=240) == 0, tail(tmp_path / "bare.log")
    finally:
        kill_group(bare)
        a.kill()
    ev_a, ev_b = a.events(), b.events()
    for ev in ev_a + ev_b:
        assert ev["event"] not in ("hang_detected", "trainer_restarted", "failed"), ev
    assert ev_a[-1]["event"] == "preempted" and ev_a[-1]["checkpoint_step"] == STOP_AT, ev_a[-1]
    assert max(trained(a)) == STOP_AT  # the step the trainer was on is the step saved: 0 lost
    resumed = [e for e in ev_b if e["event"] == "resumed"][0]
    assert resumed["source"] == "remote" and resumed["step"] == STOP_AT
    assert trained(b)[0] == STOP_AT + 1 and trained(b)[-1] == STEPS
    published = [e for e in ev_b if e["event"] == "final_published"]
    assert len(published) == 1 and published[0]["step"] == STEPS
    assert ev_b[-1]["event"] == "completed", ev_b[-1]
    with urllib.request.urlopen(f"{cmd.url}/api/runs/{RUN}", timeout=5) as resp:
        run = json.loads(resp.read())
    assert run["status"] == "completed" and run["step"] == STEPS  # the trainer's final step
    final = tmp_path / "remote" / RUN / "final"
    assert (final / "manifest.json").is_file()
    diff = max_weight_diff(recipe.bare_final(tmp_path / "bare") / recipe.weights, final / recipe.weights)
    print(
        f"{recipe.name} under two workers: max |w - w_bare| = {diff:.3g}; pod-a {a_wall:.1f}s, pod-b {b_wall:.1f}s"
    )
    assert diff < 1e-5
    return {"a": ev_a, "b": ev_b, "final": final}


def test_llamafactory_relayed_by_two_workers(
    tmp_path: Path, commander_factory: Any, lf_recipe: Recipe
) -> None:
    got = relay_e2e(tmp_path, commander_factory(lease_ttl_s=TTL), lf_recipe)
    assert (got["final"] / "adapter_model.safetensors").is_file() and (
        got["final"] / "tokenizer.json"
    ).is_file()


def test_trl_sft_relayed_by_two_workers(tmp_path: Path, commander_factory: Any, trl_recipe: Recipe) -> None:
    got = relay_e2e(tmp_path, commander_factory(lease_ttl_s=TTL), trl_recipe)
    assert (got["final"] / "config.json").is_file()


def test_user_script_relayed_by_two_workers(
    tmp_path: Path, commander_factory: Any, user_recipe: Recipe
) -> None:
    got = relay_e2e(tmp_path, commander_factory(lease_ttl_s=TTL), user_recipe)
    assert (got["final"] / "model.safetensors").is_file()
