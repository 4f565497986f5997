"""configs/slime/{sft,rl}.sh: slime's checkpoint flags are the relay's RELAY_* (slime itself needs CUDA,
Ray and sglang; its side of the mapping is Megatron's layout, tested in test_megatron.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def printed(recipe: str, tmp_path: Path, **env: str) -> list[str]:
    slime = tmp_path / "slime"
    (slime / "scripts" / "models").mkdir(parents=True, exist_ok=True)
    (slime / "scripts" / "models" / "tiny.sh").write_text("MODEL_ARGS=(--num-layers 2 --hidden-size 64)\n")
    full = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    full.update(SLIME_DIR=str(slime), SLIME_MODEL="tiny.sh", NUM_GPUS="8", **env)
    r = subprocess.run(
        ["bash", str(REPO / "configs" / "slime" / recipe), "--print"],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return shlex.split(r.stdout)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize(("recipe", "entry"), [("sft.sh", "train_async.py"), ("rl.sh", "train.py")])
def test_recipes_map_the_relay_contract_to_slime_flags(tmp_path: Path, recipe: str, entry: str) -> None:
    resumed = printed(
        recipe,
        tmp_path,
        RELAY_OUTPUT_DIR="/vol/run/ckpt/_staging",
        RELAY_RESUME_FROM="/vol/run/ckpt/step_00000040",
        RELAY_FINAL_DIR="/vol/run/final",
        SAVE_INTERVAL="5",
    )
    assert resumed[:2] == ["python3", str(tmp_path / "slime" / entry)]
    assert flag(resumed, "--load") == "/vol/run/ckpt/step_00000040"  # tracker + iter_%07d/: Megatron's --load
    assert flag(resumed, "--save") == "/vol/run/ckpt/_staging"
    assert flag(resumed, "--save-hf") == "/vol/run/final"
    assert flag(resumed, "--save-interval") == "5" and flag(resumed, "--num-layers") == "2"
    assert flag(resumed, "--actor-num-gpus-per-node") == "8"
    # a cold start: --load is empty, and slime starts from --ref-load (slime_validate_args)
    cold = printed(recipe, tmp_path, RELAY_OUTPUT_DIR="/vol/run/ckpt/_staging", RELAY_RESUME_FROM="")
    assert flag(cold, "--load") == "" and flag(cold, "--ref-load")


def test_recipe_outside_the_relay_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    r = subprocess.run(
        ["bash", str(REPO / "configs" / "slime" / "sft.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and "run under the relay worker (RELAY_OUTPUT_DIR is not set)" in r.stderr
