"""The three third-party trainers the relay is tested with (tests/trainer/conftest.py's fixtures, the bench).

Each recipe is the same command wherever it runs (its output directory is relative, ``user_out``), with a
few steps on the tiny model and a local data set: LLaMA-Factory (``llamafactory-cli train x.yaml``, LoRA)
and TRL's CLI (``trl sft``) in their own environments, and a user's own Trainer script in the worker's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from relay_testkit.third_party import Recipe, trainer_env_bin

STEPS = 10
USER_SCRIPT = Path(__file__).resolve().parent / "user_trainer_script.py"


def llamafactory_recipe(root: Path, model: Path, pc_data: Path) -> Recipe:
    data_dir = root / "lf_data"
    data_dir.mkdir(parents=True)
    rows = [json.loads(line) for line in pc_data.read_text().splitlines()]
    (data_dir / "tiny.json").write_text(
        json.dumps([{"instruction": r["prompt"], "input": "", "output": r["completion"]} for r in rows])
    )
    (data_dir / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))
    cfg = {
        "model_name_or_path": str(model),
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
        "output_dir": "user_out",  # the user's own: the relay keeps checkpoints out of it
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
    path = root / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = trainer_env_bin("llamafactory") / "llamafactory-cli"
    return Recipe("llamafactory", [str(cli), "train", str(path)], "adapter_model.safetensors")


def trl_recipe(model: Path, pc_data: Path) -> Recipe:
    trl = trainer_env_bin("trl") / "trl"
    command = [
        str(trl), "sft",
        "--model_name_or_path", str(model),
        "--dataset_name", str(pc_data.parent),
        "--output_dir", "user_out",
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
    return Recipe("trl", command, "model.safetensors")


def user_script_recipe(model: Path, pc_data: Path) -> Recipe:
    command = [sys.executable, str(USER_SCRIPT), str(model), str(pc_data), "user_out"]
    return Recipe("user_script", command, "model.safetensors", final_subdir="my-final-model")
