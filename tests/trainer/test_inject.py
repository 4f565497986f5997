"""The injected sitecustomize on its own, in plain Python processes (no transformers, fast): the off
switch, chaining to the environment's own sitecustomize, SIGTERM before training, heartbeats, launchers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from relay_testkit.trainer_env import injected_env
from relay_testkit.wait import wait_for


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "SLIME_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        RELAY_OUTPUT_DIR=str(tmp_path / "staging"),
        RELAY_PROGRESS_FILE=str(tmp_path / "progress.jsonl"),
        RELAY_EPOCH="4",
        RELAY_HEARTBEAT_S="0.1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return injected_env(env)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_active_under_the_relay_and_off_by_switch(tmp_path: Path) -> None:
    code = "import sys, relay_inject; print(relay_inject.runtime() is not None, relay_inject.runtime().env.epoch if relay_inject.runtime() else '')"
    r = subprocess.run(
        [sys.executable, "-c", code], env=env_for(tmp_path), capture_output=True, text=True, timeout=30
    )
    assert r.stdout.split() == ["True", "4"], r.stderr
    off = env_for(tmp_path, RELAY_INSTRUMENT="0")
    r = subprocess.run([sys.executable, "-c", code], env=off, capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["False"], r.stderr
    bad = env_for(tmp_path, RELAY_EPOCH="x")  # the relay's contract broken: exit 2, one line
    r = subprocess.run(
        [sys.executable, "-c", "print('ran')"], env=bad, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "RELAY_EPOCH must be an integer" in r.stderr and "ran" not in r.stdout


def test_the_environments_own_sitecustomize_still_runs(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['OWN_SITECUSTOMIZE'] = 'ran'\n")
    env = env_for(tmp_path)
    env["PYTHONPATH"] += os.pathsep + str(own)
    code = "import os, relay_inject; print(os.environ.get('OWN_SITECUSTOMIZE'), relay_inject.runtime() is not None)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["ran", "True"], r.stderr


def test_sigterm_before_training_exits_0_at_once_and_heartbeats_meanwhile(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],  # "importing, loading the model..."
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(lines(tmp_path / "progress.jsonl")) >= 2, 20, "heartbeats", proc)
        beats = lines(tmp_path / "progress.jsonl")
        assert all(b["heartbeat"] is True and b["step"] == 0 and b["epoch"] == 4 for b in beats)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
        assert "SIGTERM before the first step: nothing new to save, exit 0" in proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()


def test_a_launcher_waits_for_its_child_and_stays_silent(tmp_path: Path) -> None:
    child = "import signal, time, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"
    launcher = (  # its child is left uninstrumented here, so any heartbeat would be the launcher's
        "import os, subprocess, sys; env = dict(os.environ, RELAY_INSTRUMENT='0'); "
        "p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], env=env); sys.exit(p.wait())"
    )
    env = env_for(tmp_path, RELAY_INSTRUMENT="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, child],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(1.5)  # the child runs: the launcher writes no heartbeat while it waits for it
        before = len(lines(tmp_path / "progress.jsonl"))
        time.sleep(0.5)
        assert len(lines(tmp_path / "progress.jsonl")) == before <= 3  # at most its own start-up
        os.killpg(proc.pid, signal.SIGTERM)  # the worker signals the whole group
        assert proc.wait(timeout=10) == 0  # it did not exit before its child: it exits as the child did
        assert "waiting for the processes this launcher started" in proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
