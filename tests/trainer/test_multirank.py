"""Built-in SFT on 2 CPU ranks (torchrun + gloo) through the real launcher, plain DDP and DeepSpeed ZeRO-3:
SIGTERM to the launcher pid (the elastic agent) saves one complete checkpoint holding every rank's RNG state
(and, under ZeRO-3, every rank's parameter and optimizer shards), and a resume from it continues the
uninterrupted run's losses exactly."""

from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path

import pytest

from tests.trainer.conftest import (
    assert_same_steps,
    launch,
    log_text,
    read_lines,
    stop_group,
    trainer_env,
    wait_step,
)
from tests.trainer.test_deepspeed import assert_deepspeed_checkpoint, ds_config, sft_train


def _gloo_available() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


NPROC = 2
STEPS = 16
STOP_AT = 2

pytestmark = pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with gloo is not available")


@pytest.mark.parametrize("zero_stage", [None, 3], ids=["ddp", "zero3"])
def test_two_rank_sigterm_checkpoint_and_exact_resume(
    tmp_path: Path, tiny_model: Path, sft_data: Path, zero_stage: int | None
) -> None:
    # 24 rows / (2 ranks x batch 2) = 6 steps per epoch; steps take ~20 ms here and SIGTERM lands a step or
    # two after it is sent, so STEPS leaves a wide margin for a loaded machine (and crosses epoch ends).
    train = sft_train(tiny_model, sft_data, STEPS, warmup_ratio=0.1, seed=3)
    if zero_stage is not None:
        train["deepspeed"] = ds_config(zero_stage)
    a_dir, b_dir, c_dir = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    nproc = {"RELAY_NPROC": str(NPROC)}
    a = launch("sft", trainer_env(a_dir, train, **nproc), a_dir / "trainer.log")
    b = launch("sft", trainer_env(b_dir, train, **nproc), b_dir / "trainer.log")
    try:
        wait_step(b_dir / "progress.jsonl", STOP_AT, b, timeout=120)
        b.send_signal(signal.SIGTERM)  # the launcher exec'ed into torchrun's agent: it forwards to every rank
        assert b.wait(timeout=90) == 0, log_text(b_dir / "trainer.log")[-3000:]
        assert a.wait(timeout=120) == 0, log_text(a_dir / "trainer.log")[-3000:]
    finally:
        stop_group(a)
        stop_group(b)
    b_log = log_text(b_dir / "trainer.log")
    assert "relay dist_launch: SIGTERM forwarded to every rank" in b_log, b_log[-3000:]

    ref = read_lines(a_dir / "progress.jsonl")
    assert [x["step"] for x in ref] == list(range(1, STEPS + 1))
    assert all(math.isfinite(x["loss"]) for x in ref)

    # The ranks all-reduce the stop flag at every step end, so they stop together at the first step end
    # after the signal reached them: the step is not fixed (the pause plugin is single-process
    # only), but it is the last progress line, before the end of the run, and the only checkpoint.
    staging = b_dir / "staging"
    b_lines = read_lines(b_dir / "progress.jsonl")
    stopped = b_lines[-1]["step"]
    assert [x["step"] for x in b_lines] == list(range(1, stopped + 1))
    assert STOP_AT <= stopped < STEPS, f"SIGTERM was not honoured before the end (stopped at {stopped})"
    ckpt = staging / f"step_{stopped:08d}"
    # Exactly one checkpoint; the hidden work dir is left behind empty (README §3: removed before the
    # next launch), with no checkpoint-N or half-saved rank files in it.
    assert sorted(p.name for p in staging.iterdir()) == [".relay_partial", ckpt.name]
    assert list((staging / ".relay_partial").iterdir()) == []
    assert json.loads((ckpt / "COMPLETE").read_text()) == {"step": stopped}
    assert not (ckpt / "COMPLETE.tmp").exists()
    rng = sorted(p.name for p in ckpt.glob("rng_state*.pth"))
    assert rng == [f"rng_state_{r}.pth" for r in range(NPROC)]  # one per rank, and no single-process file
    if zero_stage is None:
        for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "model.safetensors"):
            assert (ckpt / name).is_file(), name
        assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == stopped
    else:
        assert_deepspeed_checkpoint(ckpt, stopped, zero_stage, ranks=NPROC)

    # Commit it as the worker would (a copy outside the staging dir, plus its manifest), then resume.
    committed = tmp_path / "committed" / ckpt.name
    shutil.copytree(ckpt, committed)
    (committed / "manifest.json").write_text("{}")
    env = trainer_env(c_dir, train, RELAY_EPOCH="2", RELAY_RESUME_FROM=str(committed), **nproc)
    c = launch("sft", env, c_dir / "trainer.log")
    try:
        assert c.wait(timeout=120) == 0, log_text(c_dir / "trainer.log")[-3000:]
    finally:
        stop_group(c)
    c_lines = read_lines(c_dir / "progress.jsonl")
    assert [x["step"] for x in c_lines] == list(range(stopped + 1, STEPS + 1))
    assert all(x["epoch"] == 2 for x in c_lines)
    assert_same_steps(ref, b_lines + c_lines, ("loss", "learning_rate", "grad_norm"))
    assert (c_dir / "staging" / f"step_{STEPS:08d}" / "COMPLETE").exists()
    assert sorted(p.name for p in (c_dir / "staging").iterdir()) == [".relay_partial", f"step_{STEPS:08d}"]
