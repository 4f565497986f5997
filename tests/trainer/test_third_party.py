"""Third-party trainers, unmodified, under the relay's injected instrumentation (trainer_blackbox/inject).

Each runs as a user would have it: LLaMA-Factory's ``llamafactory-cli train x.yaml`` and TRL's ``trl sft``
in environments of their own (tools/trainer_envs.sh; other transformers/trl/peft versions than the
worker's), and a user's own ``Trainer`` script with ``save_total_limit=2`` and its own output_dir.  For
each: a bare uninterrupted run (A); a relayed run that gets a real SIGTERM at a step (B: exit 0, that step
saved, 0 steps lost); a relayed run resumed from B's checkpoint in another directory (C).  C's final export
equals A's weights, and no checkpoint ever lands in the user's own output directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from relay_testkit.third_party import (
    Experiment,
    checkpoints_under,
    max_weight_diff,
    relay_experiment,
    trainer_env_bin,
)
from relay_testkit.tiny_model import prompt_completion_rows, write_jsonl

STEPS = 10
STOP_AT = 5
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture(scope="session")
def pc_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pc") / "train.jsonl", prompt_completion_rows(32))


def assert_relayed(exp: Experiment, *, steps: int, stop_at: int, weights: str, user_dirs: list[Path]) -> None:
    """B stopped at ``stop_at`` with its step saved (0 lost); C went on from ``stop_at + 1``; the final
    export of the relayed run equals the bare run's; the user's own directories hold no checkpoint."""
    b_steps = sorted({x["step"] for x in exp.b_lines})
    c_steps = sorted({x["step"] for x in exp.c_lines})
    assert b_steps == list(range(1, stop_at + 1)), b_steps  # nothing past the signal, the last step saved
    assert c_steps == list(range(stop_at + 1, steps + 1)), c_steps
    assert {x["epoch"] for x in exp.c_lines} == {2}
    assert (exp.committed / "trainer_state.json").is_file() and (exp.committed / "optimizer.pt").is_file()
    diff = max_weight_diff(exp.bare_final / weights, exp.relay_final / weights)
    print(f"{exp.root.name}: max |w_relayed - w_bare| = {diff:.3g}; bare {exp.bare_wall_s:.1f}s")
    assert diff < 1e-5
    for d in user_dirs:
        assert checkpoints_under(d) == [], checkpoints_under(d)


def test_llamafactory_cli_relayed_sigterm_resume_exact(
    tmp_path: Path, tiny_model: Path, pc_data: Path
) -> None:
    data_dir = tmp_path / "lf_data"
    data_dir.mkdir()
    rows = [json.loads(line) for line in pc_data.read_text().splitlines()]
    (data_dir / "tiny.json").write_text(
        json.dumps([{"instruction": r["prompt"], "input": "", "output": r["completion"]} for r in rows])
    )
    (data_dir / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))
    cli = trainer_env_bin("llamafactory") / "llamafactory-cli"

    def command(out: Path) -> list[str]:
        cfg = {
            "model_name_or_path": str(tiny_model),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "lora_target": "all",
            "lora_rank": 4,
            "dataset": "tiny",
            "dataset_dir": str(data_dir),
            "template": "empty",
            "cutoff_len": 64,
            "overwrite_cache": True,
            "output_dir": str(out),  # the user's own: the relay keeps checkpoints out of it
            "overwrite_output_dir": True,
            "logging_steps": 1,
            "save_steps": 4,
            "save_total_limit": 1,  # rotation the relay must keep away from its checkpoints
            "plot_loss": False,
            "per_device_train_batch_size": 4,
            "learning_rate": 5.0e-3,
            "max_steps": STEPS,
            "lr_scheduler_type": "cosine",
            "seed": 3,
            "report_to": "none",
            "use_cpu": True,
            "dataloader_num_workers": 0,
        }
        path = out.parent / "sft.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        return [str(cli), "train", str(path)]

    exp = relay_experiment(tmp_path, command, stop_at=STOP_AT, bare_final=lambda out: out)
    assert_relayed(
        exp,
        steps=STEPS,
        stop_at=STOP_AT,
        weights="adapter_model.safetensors",
        user_dirs=[tmp_path / "b" / "user_out", tmp_path / "c" / "user_out"],
    )
    final = exp.relay_final  # the run's deliverable: LoRA adapter, tokenizer, config, LLaMA-Factory's logs
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"):
        assert (final / name).is_file(), sorted(p.name for p in final.iterdir())
    assert all("loss" in x and "learning_rate" in x for x in exp.b_lines + exp.c_lines)
    staged = sorted(p.name for p in (tmp_path / "c" / "staging").iterdir() if not p.name.startswith("."))
    assert staged == ["step_00000008", "step_00000010"]  # save_total_limit: 1 rotated nothing of the relay's


def test_trl_sft_cli_relayed_sigterm_resume_exact(tmp_path: Path, tiny_model: Path, pc_data: Path) -> None:
    trl = trainer_env_bin("trl") / "trl"

    def command(out: Path) -> list[str]:
        return [
            str(trl), "sft",
            "--model_name_or_path", str(tiny_model),
            "--dataset_name", str(pc_data.parent),
            "--output_dir", str(out),
            "--max_steps", str(STEPS),
            "--save_steps", "4",
            "--save_total_limit", "1",
            "--logging_steps", "1",
            "--per_device_train_batch_size", "4",
            "--learning_rate", "3e-3",
            "--seed", "3",
            "--report_to", "none",
            "--use_cpu",
            "--max_length", "64",
            "--dataloader_num_workers", "0",
        ]  # fmt: skip

    exp = relay_experiment(tmp_path, command, stop_at=STOP_AT, bare_final=lambda out: out)
    assert_relayed(
        exp,
        steps=STEPS,
        stop_at=STOP_AT,
        weights="model.safetensors",
        user_dirs=[tmp_path / "b" / "user_out", tmp_path / "c" / "user_out"],
    )
    assert (exp.relay_final / "config.json").is_file() and (exp.relay_final / "tokenizer.json").is_file()
    # `trl sft` runs its script under `accelerate launch`: the launcher process waited for its child's save
    assert "waiting for the processes this launcher started" in (tmp_path / "b.log").read_text()
    assert any("tokens_per_s" in x for x in exp.c_lines)


def test_user_trainer_script_relayed_sigterm_resume_exact(
    tmp_path: Path, tiny_model: Path, pc_data: Path
) -> None:
    def command(out: Path) -> list[str]:
        return [sys.executable, str(SCRIPTS / "user_trainer.py"), str(tiny_model), str(pc_data), str(out)]

    exp = relay_experiment(tmp_path, command, stop_at=STOP_AT, bare_final=lambda out: out / "my-final-model")
    assert_relayed(
        exp,
        steps=STEPS,
        stop_at=STOP_AT,
        weights="model.safetensors",
        user_dirs=[tmp_path / "b" / "user_out", tmp_path / "c" / "user_out"],
    )
    # the script saved its model where it wanted; the relay's final directory got a copy
    assert (tmp_path / "c" / "user_out" / "my-final-model" / "model.safetensors").is_file()
    # logging_steps=2: logged steps carry the loss, the others still get a line (liveness, step)
    assert [("loss" in x) for x in exp.c_lines] == [s % 2 == 0 for s in range(STOP_AT + 1, STEPS + 1)]
    # save_total_limit=2 rotated none of the relay's checkpoints (steps 6 and 9, and the final 10)
    staged = sorted(p.name for p in (tmp_path / "c" / "staging").iterdir() if not p.name.startswith("."))
    assert staged == ["step_00000006", "step_00000009", "step_00000010"]
