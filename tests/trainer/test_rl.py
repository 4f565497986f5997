"""Built-in GRPO through the real launcher on a tiny Llama: reward and kl reported, exact resume after SIGTERM."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.trainer.conftest import LAUNCHERS, assert_same_steps, relay_resume_experiment, trainer_env

STEPS = 5


def rl_train(model: Path, data: Path, **over: object) -> dict:
    train = {
        "model": str(model),
        "dataset": str(data),
        "max_steps": STEPS,
        "save_steps": 100,
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "learning_rate": 1e-2,
        "beta": 0.1,
        "seed": 0,
        # A random tiny model never writes a right answer; "contains a digit" gives the groups reward variance.
        "rewards": [{"type": "exact_match"}, {"type": "format", "pattern": r".*\d.*", "weight": 0.5}],
    }
    train.update(over)
    return train


def test_rl_sigterm_resume_is_exact(tmp_path: Path, tiny_model: Path, rl_data: Path) -> None:
    a, b, c, committed = relay_resume_experiment("rl", rl_train(tiny_model, rl_data), tmp_path, stop_at=2)
    assert [x["step"] for x in a] == list(range(1, STEPS + 1))
    assert len({x["reward"] for x in a}) > 1, "rewards must vary, or the test proves nothing about sampling"
    assert any(x["kl"] > 0 for x in a)
    assert "rewards/exact_match/mean" in a[0] and "rewards/format/mean" in a[0]
    assert [x["step"] for x in b] == [1, 2]
    assert c[0]["step"] == 3
    assert_same_steps(a, b + c, ("loss", "reward", "kl", "learning_rate"))
    assert (committed / "rng_state.pth").exists()


def test_rl_group_size_error_before_model_load(tmp_path: Path, tiny_model: Path, rl_data: Path) -> None:
    env = trainer_env(tmp_path, rl_train(tiny_model, rl_data, num_generations=3), RELAY_MODE="rl")
    r = subprocess.run(
        ["bash", str(LAUNCHERS / "launch_rl.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "train.num_generations: 3 must divide the generation batch" in r.stderr
    assert "Traceback" not in r.stderr
