"""Async checkpoints of the built-in SFT trainer (the instrumentation every Trainer gets), through the real
launcher on a tiny Llama, against synchronous saves and an uninterrupted run:

- a checkpoint written in the background while training went on holds the step it was taken at: a resume
  from it logs bit-equal losses, and its files equal those of a synchronous save of the same step;
- a SIGTERM while a save is in flight waits for it, then saves the step stopped at: 0 steps lost;
- a save request from the worker (RELAY_SAVE_REQUEST_FILE) is honoured at the next step end.

One experiment (module fixture) runs five trainers, three then two at a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from relay_testkit.once import once_per_session
from relay_testkit.trainer_env import hold_save_env, pause_at_step_env
from tests.trainer.conftest import (
    launch,
    log_text,
    read_lines,
    stop_group,
    trainer_env,
    wait_step,
)

STEPS = 6
KEYS = ("loss", "grad_norm", "learning_rate")


def train_block(model: Path, data: Path) -> dict[str, Any]:
    return {
        "model": str(model),
        "dataset": str(data),
        "max_steps": STEPS,
        "save_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "max_seq_length": 32,
        "seed": 5,
    }


def committed(staged: Path, root: Path) -> Path:
    """Move a staged checkpoint out as the worker's commit does (plus the worker's manifest)."""
    assert json.loads((staged / "COMPLETE").read_text()) == {"step": int(staged.name.split("_")[1])}
    dst = root / "committed" / staged.parent.parent.name / staged.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dst)
    (dst / "manifest.json").write_text("{}")
    return dst


def finish(proc: subprocess.Popen[bytes], run_dir: Path, timeout: float = 120) -> None:
    try:
        assert proc.wait(timeout=timeout) == 0, log_text(run_dir / "trainer.log")[-4000:]
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, sft_data: Path) -> dict[str, Path]:
    """a: async, a save request waiting from the start, the write of step 2 held until step 3 is trained;
    s: the same with synchronous saves; b: async, the write of step 2 held until SIGTERM, which comes after
    step 3; then c resumes from a's step 2 and d from b's step 3.  Run once per session (relay_testkit.once)."""
    dirs = once_per_session(
        tmp_path_factory, "async-save", lambda root: run_experiment(root, tiny_model, sft_data)
    )
    return {name: Path(path) for name, path in dirs.items()}


def run_experiment(root: Path, tiny_model: Path, sft_data: Path) -> dict[str, str]:
    train = train_block(tiny_model, sft_data)
    dirs = {name: root / name for name in "asbcd"}
    request = root / "save_request.json"
    request.write_text(json.dumps({"id": 1, "reason": "save_every_s", "interval_s": 1.0, "ts": 0.0}))
    asks = {"RELAY_SAVE_REQUEST_FILE": str(request)}
    a = launch(
        "sft", hold_save_env(trainer_env(dirs["a"], train, **asks), 2, "step:3"), dirs["a"] / "trainer.log"
    )
    s = launch("sft", trainer_env(dirs["s"], train, RELAY_ASYNC_SAVE="0", **asks), dirs["s"] / "trainer.log")
    b_env = pause_at_step_env(hold_save_env(trainer_env(dirs["b"], train), 2, "sigterm"), 3)
    b = launch("sft", b_env, dirs["b"] / "trainer.log")
    try:
        wait_step(dirs["b"] / "progress.jsonl", 3, b, timeout=180)
        b.send_signal(signal.SIGTERM)
        finish(b, dirs["b"])
        finish(a, dirs["a"])
        finish(s, dirs["s"])
    finally:
        for proc in (a, s, b):
            stop_group(proc)
    resumed = {}
    for name, source, step in (("c", "a", 2), ("d", "b", 3)):
        ckpt = committed(dirs[source] / "staging" / f"step_{step:08d}", root)
        env = trainer_env(dirs[name], train, RELAY_EPOCH="2", RELAY_RESUME_FROM=str(ckpt))
        resumed[name] = launch("sft", env, dirs[name] / "trainer.log")
        dirs[f"{source}{step}"] = ckpt
    for name, proc in resumed.items():
        finish(proc, dirs[name])
    return {name: str(path) for name, path in dirs.items()}


def lines(run_dir: Path) -> list[dict[str, Any]]:
    return read_lines(run_dir / "progress.jsonl")


def assert_bit_equal(reference: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    ref = {x["step"]: x for x in reference}
    for line in got:
        for key in KEYS:
            assert line[key] == ref[line["step"]][key], (
                f"step {line['step']} {key}: {line[key]} != {ref[line['step']][key]}"
            )


def test_a_checkpoint_written_behind_training_resumes_bit_exactly(experiment: dict[str, Path]) -> None:
    a, c = lines(experiment["a"]), lines(experiment["c"])
    assert [x["step"] for x in a] == list(range(1, STEPS + 1))
    log = log_text(experiment["a"] / "trainer.log")
    assert "checkpoints: async" in log
    # the files of step 2 were written after step 3 had changed the weights and the optimizer state
    assert "relay-test-hold-save: writing step 2 now, the trainer has finished step 3" in log
    assert [x["step"] for x in c] == [3, 4, 5, 6] and all(x["epoch"] == 2 for x in c)
    assert_bit_equal(a, c)
    assert_bit_equal(a, lines(experiment["s"]))  # async saves change nothing in training
    assert all(x["save_pause_s"] >= 0 for x in a if x["step"] in (2, 3, 5))  # the line after each save


def test_async_files_equal_a_synchronous_save(experiment: dict[str, Path]) -> None:
    got, want = experiment["a2"], experiment["s"] / "staging" / "step_00000002"
    assert "checkpoints: synchronous (RELAY_ASYNC_SAVE=0)" in log_text(experiment["s"] / "trainer.log")
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir() if p.name != "manifest.json") == names
    assert "optimizer.pt" in names and "rng_state.pth" in names and "model.safetensors" in names
    for name in names:
        if name.endswith(".safetensors"):
            x, y = load_file(got / name), load_file(want / name)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
        elif name.endswith((".pt", ".pth")):
            x, y = torch.load(got / name, weights_only=False), torch.load(want / name, weights_only=False)
            assert_same_object(x, y, name)
        elif name == "trainer_state.json":  # the same but for the wall times in its log history
            assert untimed(got / name) == untimed(want / name)
        elif name != "training_args.bin":  # holds the run's own output paths
            assert (got / name).read_bytes() == (want / name).read_bytes(), name


def untimed(path: Path) -> dict[str, Any]:
    state = json.loads(path.read_text())
    for entry in state["log_history"]:
        for key in ("train_runtime", "train_tokens_per_second"):
            entry.pop(key, None)
    return state


def assert_same_object(x: Any, y: Any, where: str) -> None:
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), where
    elif isinstance(x, dict):
        assert type(x) is type(y) and x.keys() == y.keys(), where
        for k in x:
            assert_same_object(x[k], y[k], f"{where}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        assert type(x) is type(y) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_same_object(u, v, f"{where}[{i}]")
    elif type(x).__module__ == "numpy":
        assert (x == y).all(), where
    else:
        assert x == y, where


def test_sigterm_during_an_async_save_loses_nothing(experiment: dict[str, Path]) -> None:
    a, b, d = lines(experiment["a"]), lines(experiment["b"]), lines(experiment["d"])
    log = log_text(experiment["b"] / "trainer.log")
    assert "relay-test-hold-save: holding the write of step 2 until sigterm" in log
    assert "waiting for the checkpoint of step 2 (still being written) before saving the next" in log
    assert log.index("writing step 2 now") < log.index("checkpoint of step 2 complete")
    assert log.index("checkpoint of step 2 complete") < log.index("checkpoint of step 3 complete")
    assert "exit 0 at step 3 (SIGTERM; checkpoint saved)" in log
    assert [x["step"] for x in b] == [1, 2, 3]
    assert (experiment["b"] / "staging" / "step_00000002" / "COMPLETE").exists()
    assert [x["step"] for x in d] == [4, 5, 6]
    assert_bit_equal(a, b + d)


def test_a_save_request_is_honoured_at_the_next_step_end(experiment: dict[str, Path]) -> None:
    for run in ("a", "s"):
        staged = sorted(p.name for p in (experiment[run] / "staging").glob("step_*"))
        expected = ["step_00000001", "step_00000004", "step_00000006"]  # step 2 was moved out (a) or kept (s)
        assert [n for n in staged if n != "step_00000002"] == expected, run
        assert "saving step 1: the worker asked for a checkpoint" in log_text(experiment[run] / "trainer.log")
