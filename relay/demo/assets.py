"""What the demo trains: a tiny Llama model, its tokenizer and a small SFT data set, built locally.

Built in a subprocess of the demo (``python -m relay.demo.assets DIR`` prints the result as JSON), so
the demo process itself never imports torch and can start the commander meanwhile.  No download and no GPU: the model is randomly initialised (a few ten-thousand parameters) and the
tokenizer is a byte-level BPE trained on an in-memory corpus (``trainer_blackbox.tiny``, the same
builder the trainer tests use), so the demo runs anywhere in seconds.  The data are chat rows ("What is
3 + 4?" -> "<answer>7</answer>"), which such a model learns quickly: the loss visibly falls.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoAssets:
    model_dir: Path
    dataset: Path
    rows: int
    parameters: int

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> DemoAssets:
        d = json.loads(text)
        return cls(Path(d["model_dir"]), Path(d["dataset"]), int(d["rows"]), int(d["parameters"]))


def build_assets(root: Path, *, rows: int = 64, seed: int = 0) -> DemoAssets:
    """Build the model (with its tokenizer) and the JSONL data set under ``root``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    from trainer_blackbox.tiny import build_tiny_model, chat_rows, write_jsonl

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model_dir = build_tiny_model(root / "tiny-llama", seed=seed)
    dataset = write_jsonl(root / "sft.jsonl", chat_rows(rows, seed=seed))
    return DemoAssets(
        model_dir=model_dir, dataset=dataset, rows=rows, parameters=_count_parameters(model_dir)
    )


def _count_parameters(model_dir: Path) -> int:
    """Parameters in the saved weights (read from the safetensors header; no model is instantiated)."""
    import struct

    total = 0
    for file in model_dir.glob("*.safetensors"):
        with open(file, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header: dict[str, Any] = json.loads(fh.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info.get("shape", []):
                count *= int(dim)
            total += count
    return total


def train_block(
    assets: DemoAssets, *, steps: int, save_steps: int, deepspeed: Path | None = None
) -> dict[str, Any]:
    """The ``train:`` block of the demo run (built-in SFT; keys as in transformers' TrainingArguments)."""
    train: dict[str, Any] = {
        "model": str(assets.model_dir),
        "dataset": str(assets.dataset),
        "max_steps": steps,
        "save_steps": save_steps,
        "per_device_train_batch_size": 8,
        "learning_rate": 0.01,
        "lr_scheduler_type": "linear",
        "warmup_steps": 2,
        "seed": 0,
        "max_seq_length": 64,
    }
    if deepspeed is not None:
        train["deepspeed"] = str(deepspeed)
    return train


def main(argv: list[str] | None = None) -> int:
    """``python -m relay.demo.assets DIR``: build into DIR, print the DemoAssets JSON as the last line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m relay.demo.assets DIR", file=sys.stderr)
        return 2
    assets = build_assets(Path(args[0]))
    print(assets.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
