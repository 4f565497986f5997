"""Fixtures for the trainer tests: the tiny model (built once), trainer environments and process helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay_testkit.commander_proc import commander_factory  # noqa: F401 - the e2e tests' fixture
from relay_testkit.third_party import Recipe
from relay_testkit.tiny_model import (
    arithmetic_rl_rows,
    build_tiny_model,
    chat_rows,
    prompt_completion_rows,
    write_jsonl,
)
from relay_testkit.trainer_env import pause_at_step_env
from relay_testkit.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
LAUNCHERS = REPO / "trainer_blackbox"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama + tokenizer saved once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", chat_rows(24))


@pytest.fixture(scope="session")
def pc_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prompt/completion rows, alone in their directory (TRL's CLI loads the directory as a data set)."""
    return write_jsonl(tmp_path_factory.mktemp("pc") / "train.jsonl", prompt_completion_rows(32))


# The third-party trainers (relay_testkit/trainer_recipes.py); a missing environment fails the tests
# that need it with the command that builds it.
@pytest.fixture(scope="session")
def lf_recipe(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, pc_data: Path) -> Recipe:
    from relay_testkit.trainer_recipes import llamafactory_recipe

    return llamafactory_recipe(tmp_path_factory.mktemp("lf"), tiny_model, pc_data)


@pytest.fixture(scope="session")
def trl_recipe(tiny_model: Path, pc_data: Path) -> Recipe:
    from relay_testkit.trainer_recipes import trl_recipe

    return trl_recipe(tiny_model, pc_data)


@pytest.fixture(scope="session")
def user_recipe(tiny_model: Path, pc_data: Path) -> Recipe:
    from relay_testkit.trainer_recipes import user_script_recipe

    return user_script_recipe(tiny_model, pc_data)


@pytest.fixture(scope="session")
def rl_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "rl.jsonl", arithmetic_rl_rows(16))


def trainer_env(run_dir: Path, train: dict[str, Any] | None, **extra: str) -> dict[str, str]:
    """The RELAY_* environment the worker would give a trainer running in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "SLIME_"))}
    env.update(
        RELAY_RUN_ID="run-test",
        RELAY_MODE="sft",
        RELAY_EPOCH="1",
        RELAY_OUTPUT_DIR=str(run_dir / "staging"),
        RELAY_RESUME_FROM="",
        RELAY_PROGRESS_FILE=str(run_dir / "progress.jsonl"),
        RELAY_PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if train is not None:
        cfg = run_dir / "train_config.json"
        cfg.write_text(json.dumps(train), encoding="utf-8")
        env["RELAY_TRAIN_CONFIG"] = str(cfg)
    env.update(extra)
    return env


def launch(mode: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``launch_<mode>.sh`` like the worker does (own session, output to ``log``)."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        ["bash", str(LAUNCHERS / f"launch_{mode}.sh")],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
    )


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The progress lines of trained steps (heartbeat lines, written while a trainer starts, saves or
    exports, are left out: relay_inject.heartbeat)."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.strip():
            line = json.loads(raw)
            if line.get("heartbeat") is not True:
                out.append(line)
    return out


def wait_step(progress: Path, step: int, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    wait_for(
        lambda: any(x["step"] >= step for x in read_lines(progress)), timeout, f"progress step {step}", proc
    )


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of a test's process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def log_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def relay_resume_experiment(
    mode: str, train: dict[str, Any], root: Path, *, stop_at: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Run ``mode`` uninterrupted (A) and, alongside it, a run that gets a real SIGTERM after progress line
    ``stop_at`` (B); then resume a third run (C) from B's checkpoint after moving it away as the worker's
    commit does.  Returns the progress lines of A, B, C and the committed checkpoint directory."""
    a_dir, b_dir = root / "a", root / "b"
    a = launch(mode, trainer_env(a_dir, train, RELAY_MODE=mode), a_dir / "trainer.log")
    b = launch(
        mode,
        pause_at_step_env(trainer_env(b_dir, train, RELAY_MODE=mode), stop_at),
        b_dir / "trainer.log",
    )
    try:
        wait_step(b_dir / "progress.jsonl", stop_at, b, timeout=120)
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=60) == 0, log_text(b_dir / "trainer.log")[-3000:]
        assert a.wait(timeout=120) == 0, log_text(a_dir / "trainer.log")[-3000:]
    finally:
        stop_group(a)
        stop_group(b)
    staged = b_dir / "staging" / f"step_{stop_at:08d}"
    assert json.loads((staged / "COMPLETE").read_text()) == {"step": stop_at}
    committed = root / "committed" / staged.name
    committed.parent.mkdir(parents=True)
    os.replace(staged, committed)  # the worker moves committed checkpoints out of the staging dir
    (committed / "manifest.json").write_text("{}")
    c_dir = root / "c"
    c = launch(
        mode,
        trainer_env(c_dir, train, RELAY_MODE=mode, RELAY_EPOCH="2", RELAY_RESUME_FROM=str(committed)),
        c_dir / "trainer.log",
    )
    try:
        assert c.wait(timeout=120) == 0, log_text(c_dir / "trainer.log")[-3000:]
    finally:
        stop_group(c)
    return (
        read_lines(a_dir / "progress.jsonl"),
        read_lines(b_dir / "progress.jsonl"),
        read_lines(c_dir / "progress.jsonl"),
        committed,
    )


def assert_same_steps(
    reference: list[dict[str, Any]], relayed: list[dict[str, Any]], keys: tuple[str, ...], tol: float = 1e-5
) -> None:
    """Per-step metrics of the relayed run equal the uninterrupted one within ``tol``."""
    assert [x["step"] for x in relayed] == [x["step"] for x in reference]
    for ref, got in zip(reference, relayed, strict=True):
        for key in keys:
            assert key in ref and key in got, f"step {ref['step']}: {key} missing"
            assert abs(ref[key] - got[key]) <= tol, f"step {ref['step']} {key}: {ref[key]} != {got[key]}"
