"""launch_sft.sh / launch_rl.sh: custom commands, trainer selection, exec (same pid, signals), shellcheck."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relay_testkit.wait import wait_for
from tests.trainer.conftest import LAUNCHERS, REPO, launch, stop_group, trainer_env

FAKE_TRAINER = r"""
import json, os, signal, sys, time
out = sys.argv[1]
def on_term(signum, frame):
    open(out + ".term", "w").write(str(os.getpid()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
env = {k: v for k, v in os.environ.items() if k.startswith("RELAY_")}
with open(out + ".tmp", "w") as fh:
    json.dump({"pid": os.getpid(), "env": env, "argv": sys.argv[2:]}, fh)
os.replace(out + ".tmp", out)
while True:
    time.sleep(0.05)
"""

# Stands in for the python interpreter: records how the launcher called it, then exits.
FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_PY_OUT"
env | grep -E '^(PYTHONPATH|TORCH_ELASTIC_SHUTDOWN_TIMEOUT)=' >> "$FAKE_PY_OUT" || true
"""


def test_shellcheck_passes() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    scripts = sorted(str(p) for p in LAUNCHERS.glob("*.sh"))
    assert {Path(s).name for s in scripts} >= {"launch_sft.sh", "launch_rl.sh"}
    r = subprocess.run([str(shellcheck), "-x", *scripts], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("mode", ["sft", "rl"])
def test_custom_command_is_execed_with_env_and_gets_signals(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    record = tmp_path / "record.json"
    var = f"SLIME_{mode.upper()}_CMD"
    env = trainer_env(tmp_path, {"anything": True}, RELAY_MODE=mode, RELAY_EPOCH="7")
    env[var] = f"{sys.executable} {script} {record} --flag 'two words'"
    proc = launch(mode, env, tmp_path / "out.log")
    try:
        data = wait_for(
            lambda: record.exists() and json.loads(record.read_text()), 20, "fake trainer started", proc
        )
        assert data["pid"] == proc.pid  # exec all the way down: the launcher *is* the trainer
        assert data["argv"] == ["--flag", "two words"]
        assert data["env"]["RELAY_EPOCH"] == "7"
        assert data["env"]["RELAY_MODE"] == mode
        assert data["env"]["RELAY_OUTPUT_DIR"] == str(tmp_path / "staging")
        assert data["env"]["RELAY_TRAIN_CONFIG"].endswith("train_config.json")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert Path(str(record) + ".term").read_text() == str(proc.pid)
    finally:
        stop_group(proc)


@pytest.fixture()
def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    exe = tmp_path / "fakepython"
    exe.write_text(FAKE_PYTHON)
    exe.chmod(0o755)
    return exe, tmp_path / "fake_py_out.txt"


def run_launcher(mode: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(LAUNCHERS / f"launch_{mode}.sh")], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("mode", "extra", "expected_argv"),
    [
        ("sft", {}, ["-m", "trainer_blackbox.sft"]),
        ("rl", {}, ["-m", "trainer_blackbox.rl"]),
        ("rl", {"RELAY_TRAINER": "mock"}, ["-m", "trainer_blackbox.mock_trainer"]),
        ("sft", {"CUDA_VISIBLE_DEVICES": ""}, ["-m", "trainer_blackbox.sft"]),
        ("sft", {"CUDA_VISIBLE_DEVICES": "0"}, ["-m", "trainer_blackbox.sft"]),
        (
            "sft",
            {"CUDA_VISIBLE_DEVICES": "0,1,2"},
            [
                "-m",
                "trainer_blackbox.dist_launch",
                "--standalone",
                "--nproc_per_node=3",
                "-m",
                "trainer_blackbox.sft",
            ],
        ),
        (
            "rl",
            {"RELAY_NPROC": "2"},
            [
                "-m",
                "trainer_blackbox.dist_launch",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "trainer_blackbox.rl",
            ],
        ),
    ],
)
def test_trainer_selection_uses_relay_python(
    tmp_path: Path, fake_python: tuple[Path, Path], mode: str, extra: dict[str, str], expected_argv: list[str]
) -> None:
    exe, out = fake_python
    env = trainer_env(
        tmp_path, {}, RELAY_PYTHON=str(exe), FAKE_PY_OUT=str(out), PATH="/usr/bin:/bin", **extra
    )
    r = run_launcher(mode, env)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    argv = [x for x in lines if "=" not in x or x.startswith("--")]
    assert argv == expected_argv
    assert f"PYTHONPATH={REPO}" in lines
    assert any(x.startswith("TORCH_ELASTIC_SHUTDOWN_TIMEOUT=") for x in lines) == ("dist_launch" in argv[1])


def test_custom_command_wins_over_mock(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = trainer_env(tmp_path, {}, RELAY_TRAINER="mock", SLIME_SFT_CMD=f"touch {marker}")
    r = run_launcher("sft", env)
    assert r.returncode == 0, r.stderr
    assert marker.exists()
    assert not (tmp_path / "progress.jsonl").exists()


def test_custom_command_exit_code_passes_through(tmp_path: Path) -> None:
    env = trainer_env(tmp_path, {}, SLIME_RL_CMD="exit 17")
    assert run_launcher("rl", env).returncode == 17


@pytest.mark.parametrize(
    ("extra", "needle"),
    [({"RELAY_TRAINER": "bogus"}, "RELAY_TRAINER"), ({"RELAY_NPROC": "two"}, "RELAY_NPROC")],
)
def test_bad_selection_is_a_clear_error(tmp_path: Path, extra: dict[str, str], needle: str) -> None:
    r = run_launcher("sft", trainer_env(tmp_path, {}, **extra))
    assert r.returncode == 2
    assert needle in r.stderr


def test_launcher_does_not_depend_on_cwd(tmp_path: Path) -> None:
    env = trainer_env(tmp_path, {"max_steps": 1, "step_seconds": 0}, RELAY_TRAINER="mock")
    r = subprocess.run(
        ["bash", str(LAUNCHERS / "launch_rl.sh")],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "staging" / "step_00000001" / "COMPLETE").exists()
    assert "exit 0 at step 1" in r.stdout
