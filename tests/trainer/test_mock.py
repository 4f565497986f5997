"""The mock trainer through the real launcher: steps, checkpoints, resume, SIGTERM and every injected fault."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relay_testkit.wait import wait_for
from tests.trainer.conftest import REPO, launch, read_lines, stop_group, trainer_env, wait_step
from trainer_blackbox.checkpoint import read_complete_step
from trainer_blackbox.mock_trainer import MOCK_KEYS, MockConfigError, loss_at, parse_mock_config
from trainer_blackbox.train_config import MockTrainConfig, TrainConfigError, validate_train_block


def mock_env(run_dir: Path, train: dict, **extra: str) -> dict[str, str]:
    return trainer_env(run_dir, train, RELAY_TRAINER="mock", **extra)


def run_mock(
    run_dir: Path, train: dict, timeout: float = 30, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = mock_env(run_dir, train, **extra)
    return subprocess.run(
        ["bash", str(REPO / "trainer_blackbox/launch_sft.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def staged(run_dir: Path) -> dict[int, Path]:
    out = {}
    staging = run_dir / "staging"
    for d in staging.iterdir() if staging.exists() else []:
        if d.name.startswith("step_"):
            out[int(d.name[5:])] = d
    return out


def test_deterministic_steps_checkpoints_and_log(tmp_path: Path) -> None:
    train = {"max_steps": 6, "save_steps": 2, "step_seconds": 0, "checkpoint_bytes": 3000}
    r1 = run_mock(tmp_path / "a", train)
    r2 = run_mock(tmp_path / "b", train)
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr
    lines_a, lines_b = read_lines(tmp_path / "a/progress.jsonl"), read_lines(tmp_path / "b/progress.jsonl")
    assert [x["step"] for x in lines_a] == [1, 2, 3, 4, 5, 6]
    assert [x["loss"] for x in lines_a] == [x["loss"] for x in lines_b] == [loss_at(s) for s in range(1, 7)]
    assert all(x["epoch"] == 1 and isinstance(x["ts"], float) for x in lines_a)
    ckpts = staged(tmp_path / "a")
    assert sorted(ckpts) == [2, 4, 6]
    for step, d in ckpts.items():
        assert json.loads((d / "COMPLETE").read_text()) == {"step": step}
        assert (d / "weights.bin").stat().st_size == 3000
    log = read_lines(tmp_path / "a/mock_steps.jsonl")
    steps = [x for x in log if x["event"] == "step"]
    assert [x["step"] for x in steps] == [1, 2, 3, 4, 5, 6]
    assert all(x["epoch"] == 1 and x["run_id"] == "run-test" and isinstance(x["pid"], int) for x in steps)


def test_resume_continues_at_next_step_under_new_epoch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_mock(run, {"max_steps": 3, "save_steps": 0, "step_seconds": 0}).returncode == 0
    committed = tmp_path / "committed" / "step_00000003"
    shutil.move(str(staged(run)[3]), committed)  # the worker's commit moves the staged dir away
    (committed / "manifest.json").write_text("{}")  # worker files the trainer must ignore
    r = run_mock(
        run,
        {"max_steps": 6, "save_steps": 0, "step_seconds": 0},
        RELAY_EPOCH="2",
        RELAY_RESUME_FROM=str(committed),
    )
    assert r.returncode == 0, r.stderr
    lines = read_lines(run / "progress.jsonl")
    assert [(x["step"], x["epoch"]) for x in lines] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    by_epoch = {}
    for x in read_lines(run / "mock_steps.jsonl"):
        if x["event"] == "step":
            by_epoch.setdefault(x["epoch"], []).append(x["step"])
    assert by_epoch == {1: [1, 2, 3], 2: [4, 5, 6]}
    assert sorted(staged(run)) == [6]
    assert (committed / "manifest.json").read_text() == "{}"  # resume source untouched


def test_bad_resume_source_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_mock(tmp_path / "run", {"max_steps": 2}, RELAY_RESUME_FROM=str(empty))
    assert r.returncode == 2
    assert "mock_state.json" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_saves_current_step_and_exits_zero(tmp_path: Path) -> None:
    env = mock_env(tmp_path, {"max_steps": 10000, "save_steps": 0, "step_seconds": 0.05})
    proc = launch("sft", env, tmp_path / "out.log")
    try:
        wait_step(tmp_path / "progress.jsonl", 3, proc, timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop_group(proc)
    last = read_lines(tmp_path / "progress.jsonl")[-1]["step"]
    assert sorted(staged(tmp_path)) == [last]
    assert read_complete_step(staged(tmp_path)[last]) == last
    events = [x["event"] for x in read_lines(tmp_path / "mock_steps.jsonl")]
    assert events[-3:] == ["sigterm", "save", "exit"]


def test_sigterm_after_a_save_does_not_save_twice(tmp_path: Path) -> None:
    env = mock_env(tmp_path, {"max_steps": 10000, "save_steps": 1, "step_seconds": 0.2})
    proc = launch("sft", env)
    try:
        wait_for(
            lambda: staged(tmp_path).get(2) and (staged(tmp_path)[2] / "COMPLETE").exists(),
            20,
            "step 2",
            proc,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop_group(proc)
    saves = [x["step"] for x in read_lines(tmp_path / "mock_steps.jsonl") if x["event"] == "save"]
    assert len(saves) == len(set(saves))


def test_crash_every_time(tmp_path: Path) -> None:
    for _ in range(2):
        r = run_mock(tmp_path, {"max_steps": 5, "save_steps": 1, "step_seconds": 0, "crash_at_step": 3})
        assert r.returncode == 3
        assert "injected crash at step 3" in r.stderr
    assert max(x["step"] for x in read_lines(tmp_path / "progress.jsonl")) == 2


def test_crash_once_then_train_through(tmp_path: Path) -> None:
    train = {"max_steps": 5, "save_steps": 1, "step_seconds": 0, "crash_at_step": 3, "crash_times": 1}
    assert run_mock(tmp_path, train).returncode == 3
    committed = tmp_path / "committed"
    shutil.move(str(staged(tmp_path)[2]), committed)
    r = run_mock(tmp_path, train, RELAY_RESUME_FROM=str(committed), RELAY_EPOCH="2")
    assert r.returncode == 0, r.stderr
    assert [x["step"] for x in read_lines(tmp_path / "progress.jsonl")] == [1, 2, 3, 4, 5]


def test_hang_stops_progress_and_ignores_sigterm(tmp_path: Path) -> None:
    env = mock_env(tmp_path, {"max_steps": 100, "step_seconds": 0.01, "hang_at_step": 3})
    proc = launch("sft", env)
    try:
        wait_for(
            lambda: any(x["event"] == "hang" for x in read_lines(tmp_path / "mock_steps.jsonl")),
            20,
            "hang",
            proc,
        )
        proc.send_signal(signal.SIGTERM)
        wait_for(
            lambda: any(x["event"] == "sigterm_ignored" for x in read_lines(tmp_path / "mock_steps.jsonl")),
            10,
            "SIGTERM logged",
            proc,
        )
        assert proc.poll() is None
        assert [x["step"] for x in read_lines(tmp_path / "progress.jsonl")] == [1, 2]
    finally:
        stop_group(proc)
    assert proc.returncode == -signal.SIGKILL


def test_hang_once_then_train_through(tmp_path: Path) -> None:
    train = {"max_steps": 4, "step_seconds": 0, "hang_at_step": 2, "hang_times": 1}
    proc = launch("sft", mock_env(tmp_path, train))
    try:
        wait_for(
            lambda: any(x["event"] == "hang" for x in read_lines(tmp_path / "mock_steps.jsonl")), 20, "hang"
        )
    finally:
        stop_group(proc)
    r = run_mock(tmp_path, train)
    assert r.returncode == 0, r.stderr


def test_slow_checkpoint_writes_complete_last(tmp_path: Path) -> None:
    env = mock_env(tmp_path, {"max_steps": 2, "save_steps": 2, "step_seconds": 0, "slow_checkpoint_s": 1.0})
    proc = launch("sft", env)
    try:
        ckpt = tmp_path / "staging" / "step_00000002"
        wait_for(lambda: (ckpt / "weights.bin").exists(), 20, "weights written", proc)
        assert not (ckpt / "COMPLETE").exists()
        assert proc.wait(timeout=10) == 0
        assert read_complete_step(ckpt) == 2
    finally:
        stop_group(proc)


def test_ignore_sigterm_keeps_training(tmp_path: Path) -> None:
    env = mock_env(tmp_path, {"max_steps": 10000, "step_seconds": 0.02, "ignore_sigterm": True})
    proc = launch("sft", env)
    try:
        wait_step(tmp_path / "progress.jsonl", 2, proc, timeout=20)
        proc.send_signal(signal.SIGTERM)
        at_signal = read_lines(tmp_path / "progress.jsonl")[-1]["step"]
        wait_step(tmp_path / "progress.jsonl", at_signal + 5, proc, timeout=20)
        assert proc.poll() is None
    finally:
        stop_group(proc)


@pytest.mark.parametrize(
    ("train", "needle"),
    [
        ({"max_stepz": 3}, "train.max_stepz: unknown key"),
        ({"max_steps": "x"}, "train.max_steps: must be int"),
        ({"crash_at_step": 0}, "train.crash_at_step"),
        ({"ignore_sigterm": 1}, "train.ignore_sigterm"),
    ],
)
def test_bad_mock_config_names_the_key(tmp_path: Path, train: dict, needle: str) -> None:
    r = run_mock(tmp_path, train)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "progress.jsonl").exists()


def test_missing_output_dir_is_an_error(tmp_path: Path) -> None:
    env = mock_env(tmp_path, {"max_steps": 1})
    env.pop("RELAY_OUTPUT_DIR")
    r = subprocess.run(
        ["bash", str(REPO / "trainer_blackbox/launch_sft.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "RELAY_OUTPUT_DIR" in r.stderr


def test_mock_log_path_override(tmp_path: Path) -> None:
    custom = tmp_path / "elsewhere" / "mock.jsonl"
    assert run_mock(tmp_path, {"max_steps": 1, "step_seconds": 0}, RELAY_MOCK_LOG=str(custom)).returncode == 0
    assert custom.exists() and not (tmp_path / "mock_steps.jsonl").exists()


def test_pydantic_model_and_stdlib_parser_agree() -> None:
    assert set(MockTrainConfig.model_fields) == set(MOCK_KEYS)
    good = {"max_steps": 3, "step_seconds": 0.5, "crash_at_step": 2, "crash_times": 1, "ignore_sigterm": True}
    assert validate_train_block(good, "mock").model_dump() == parse_mock_config(good).__dict__
    for bad in ({"nope": 1}, {"max_steps": -1}, {"ignore_sigterm": "yes"}, {"hang_at_step": 0}):
        with pytest.raises(TrainConfigError):
            validate_train_block(bad, "mock")
        with pytest.raises(MockConfigError):
            parse_mock_config(bad)


def test_mock_imports_only_the_stdlib() -> None:
    """The mock must start in milliseconds: no torch, transformers or pydantic behind it."""
    code = (
        "import sys, trainer_blackbox.mock_trainer as m; "
        "print(sorted(x for x in ('torch', 'transformers', 'pydantic', 'numpy') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
