"""The built-in trainers under DeepSpeed ZeRO, on the CPU (DeepSpeed's CPU accelerator, gloo), one process
started as the worker starts it on a one-GPU pod: a real SIGTERM at step k saves a DeepSpeed checkpoint
(``latest`` + ``global_step<k>/``) inside the relay step directory, and a resume from it continues the
uninterrupted run's per-step metrics exactly.  The two-rank case is in test_multirank.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.conftest import assert_same_steps, relay_resume_experiment
from tests.trainer.test_rl import rl_train

STEPS = 6
STOP_AT = 3


def sft_train(model: Path, data: Path, steps: int, **over: object) -> dict[str, object]:
    """A short SFT ``train:`` block on the tiny model; one checkpoint only, when SIGTERM asks for it."""
    train: dict[str, object] = {
        "model": str(model),
        "dataset": str(data),
        "max_steps": steps,
        "save_steps": 100,
        "per_device_train_batch_size": 2,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine",
        "max_seq_length": 32,
    }
    train.update(over)
    return train


def ds_config(stage: int) -> str:
    # Relative, as a user writes it in run.yaml: the trainer resolves it inside the repo.
    return f"configs/deepspeed/zero{stage}.json"


def assert_deepspeed_checkpoint(ckpt: Path, step: int, stage: int, ranks: int = 1) -> None:
    """What DeepSpeed's own loader needs to resume: ``latest`` naming the tag, and every rank's shards."""
    assert (ckpt / "latest").read_text().strip() == f"global_step{step}"
    shards = sorted(p.name for p in (ckpt / f"global_step{step}").iterdir())
    optim = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(ranks)]
    if stage == 3:  # parameters are partitioned too: one model shard per rank
        model = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(ranks)]
    else:
        model = ["mp_rank_00_model_states.pt"]
    assert shards == sorted(model + optim)
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == step
    assert (ckpt / "scheduler.pt").is_file()
    assert not (ckpt / "optimizer.pt").exists()  # the optimizer lives in DeepSpeed's shards


@pytest.mark.parametrize("stage", [2, 3])
def test_sft_zero_sigterm_resume_is_exact(
    tmp_path: Path, tiny_model: Path, sft_data: Path, stage: int
) -> None:
    train = sft_train(tiny_model, sft_data, STEPS, seed=5, deepspeed=ds_config(stage))
    a, b, c, committed = relay_resume_experiment("sft", train, tmp_path, stop_at=STOP_AT)
    assert [x["step"] for x in a] == list(range(1, STEPS + 1))
    assert a[-1]["loss"] < a[0]["loss"]
    assert [x["step"] for x in b] == list(range(1, STOP_AT + 1))
    assert all(x["epoch"] == 2 for x in c)
    assert_same_steps(a, b + c, ("loss", "learning_rate", "grad_norm"))
    assert_deepspeed_checkpoint(committed, STOP_AT, stage)


def test_rl_zero3_sigterm_resume_is_exact(tmp_path: Path, tiny_model: Path, rl_data: Path) -> None:
    # Under ZeRO-3 generation needs the partitioned weights gathered (TRL does it); the resume must still
    # replay the same samples, rewards and KL.  ZeRO-2's checkpoint layout is the SFT test's (the same
    # engine save and load); RL adds what ZeRO-3 changes, so only that stage runs here.
    stage = 3
    train = rl_train(tiny_model, rl_data, deepspeed=ds_config(stage))
    a, b, c, committed = relay_resume_experiment("rl", train, tmp_path, stop_at=2)
    assert [x["step"] for x in b] == [1, 2]
    assert len({x["reward"] for x in a}) > 1
    assert_same_steps(a, b + c, ("loss", "reward", "kl", "learning_rate"))
    assert_deepspeed_checkpoint(committed, 2, stage)
