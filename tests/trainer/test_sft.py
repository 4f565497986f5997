"""Built-in SFT through the real launcher on a tiny Llama: loss falls, exact resume after SIGTERM, user errors."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from relay_testkit.tiny_model import prompt_completion_rows, write_jsonl
from tests.trainer.conftest import LAUNCHERS, assert_same_steps, relay_resume_experiment, trainer_env

STEPS = 8


def sft_train(model: Path, data: Path, **over: object) -> dict:
    train = {
        "model": str(model),
        "dataset": str(data),
        "max_steps": STEPS,
        "save_steps": 100,
        "per_device_train_batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "max_seq_length": 32,
        "seed": 3,
    }
    train.update(over)
    return {k: v for k, v in train.items() if v is not None}


def test_sft_loss_falls_and_sigterm_resume_is_exact(tmp_path: Path, tiny_model: Path, sft_data: Path) -> None:
    # 24 rows / batch 4 = 6 steps per epoch: the resumed run crosses an epoch boundary.
    a, b, c, committed = relay_resume_experiment("sft", sft_train(tiny_model, sft_data), tmp_path, stop_at=3)
    assert [x["step"] for x in a] == list(range(1, STEPS + 1))
    assert a[-1]["loss"] < a[0]["loss"] - 0.5, [x["loss"] for x in a]
    assert all(x["tokens_per_s"] > 0 for x in a[1:])
    assert [x["step"] for x in b] == [1, 2, 3]  # saved at the step it was stopped on, nothing after
    assert c[0]["step"] == 4 and all(x["epoch"] == 2 for x in c)
    assert_same_steps(a, b + c, ("loss", "learning_rate", "grad_norm"))
    assert (committed / "optimizer.pt").exists() and (committed / "rng_state.pth").exists()
    assert (tmp_path / "c" / "staging" / f"step_{STEPS:08d}" / "COMPLETE").exists()
    assert not any(p.name.startswith("checkpoint-") for p in (tmp_path / "c" / "staging").iterdir())


def test_sft_lora_gradient_checkpointing_resume_is_exact(tmp_path: Path, tiny_model: Path) -> None:
    """LoRA adapters with dropout, activation checkpointing, gradient accumulation, prompt/completion rows."""
    data = write_jsonl(tmp_path / "pc.jsonl", prompt_completion_rows(16))
    train = sft_train(
        tiny_model,
        data,
        max_steps=5,
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        warmup_ratio=None,
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
        lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.1},
    )
    a, b, c, committed = relay_resume_experiment("sft", train, tmp_path, stop_at=2)
    assert [x["step"] for x in b] == [1, 2] and c[0]["step"] == 3
    assert_same_steps(a, b + c, ("loss", "learning_rate", "grad_norm"))
    assert (committed / "adapter_model.safetensors").exists()
    assert not (committed / "model.safetensors").exists()  # only the adapters are trained and saved


def run_sft(tmp_path: Path, train: dict) -> tuple[subprocess.CompletedProcess[str], float]:
    env = trainer_env(tmp_path, train, RELAY_MODE="sft")
    t0 = time.monotonic()
    r = subprocess.run(
        ["bash", str(LAUNCHERS / "launch_sft.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    return r, time.monotonic() - t0


def test_unknown_key_fails_fast_naming_it(tmp_path: Path, tiny_model: Path, sft_data: Path) -> None:
    r, took = run_sft(tmp_path, sft_train(tiny_model, sft_data, learning_rte=1.0))
    assert r.returncode == 2
    assert "relay-sft: error: train.learning_rte: unknown key (did you mean 'learning_rate'?)" in r.stderr
    assert "Traceback" not in r.stderr
    assert took < 5  # before torch and transformers were even imported


def test_dataset_error_fails_before_the_model_loads(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    r, took = run_sft(tmp_path, sft_train(tiny_model, data))
    assert r.returncode == 2
    assert f"dataset {data} line 2: expected 'messages' or 'prompt' + 'completion'" in r.stderr
    assert "Traceback" not in r.stderr and took < 5
    assert not (tmp_path / "staging").exists()


def test_missing_model_is_a_clear_error(tmp_path: Path, sft_data: Path) -> None:
    r, took = run_sft(tmp_path, sft_train(tmp_path / "no-such-model", sft_data))
    assert r.returncode == 2
    assert f"relay-sft: error: train.model: no such directory: {tmp_path / 'no-such-model'}" in r.stderr
    assert "Traceback" not in r.stderr and took < 5


def test_model_that_cannot_load_is_a_clear_error(tmp_path: Path, sft_data: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    r, _ = run_sft(tmp_path, sft_train(broken, sft_data))
    assert r.returncode == 2
    assert "relay-sft: error: train.model: cannot load a tokenizer from" in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_source_that_is_not_a_trainer_checkpoint(
    tmp_path: Path, tiny_model: Path, sft_data: Path
) -> None:
    mock_ckpt = tmp_path / "step_00000003"
    mock_ckpt.mkdir()
    (mock_ckpt / "mock_state.json").write_text('{"step": 3}')
    env = trainer_env(tmp_path, sft_train(tiny_model, sft_data), RELAY_RESUME_FROM=str(mock_ckpt))
    r = subprocess.run(
        ["bash", str(LAUNCHERS / "launch_sft.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "holds no trainer_state.json" in r.stderr and "Traceback" not in r.stderr
