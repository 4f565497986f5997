"""A tiny Llama-architecture model, its tokenizer and small JSONL data sets, built locally (no downloads).

Why: the trainer tests and ``relayctl demo`` (shipped code, so this lives in the package rather than
under tests/) must exercise the real transformers/TRL code paths (save_pretrained, from_pretrained,
chat templates, generation) on a 2-core CPU in seconds, with no network.  A model of a few
ten-thousand parameters and a byte-level BPE tokenizer trained on an in-memory corpus give
exactly that.  Everything heavy is imported inside the functions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def _corpus() -> list[str]:
    """Text the BPE merges are learnt from: arithmetic, the answer format and a few words."""
    rng = random.Random(0)
    lines = []
    for _ in range(400):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        lines.append(f"What is {a} + {b}? <answer>{a + b}</answer>")
    lines += ["hello world", "the quick brown fox jumps over the lazy dog", "yes no maybe"] * 20
    return lines


def build_tokenizer(save_dir: Path | None = None, vocab_size: int = 300) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with a chat template, optionally saved to ``save_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def build_tiny_model(
    save_dir: Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    vocab_size: int = 300,
) -> Path:
    """Save a randomly initialised tiny ``LlamaForCausalLM`` and its tokenizer to ``save_dir``; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(save_dir, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(save_dir))
    return save_dir


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON Lines; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def chat_rows(n: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """Chat-format SFT rows: a user asks a sum, the assistant answers in the <answer> format."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} + {b}?"},
                    {"role": "assistant", "content": f"<answer>{a + b}</answer>"},
                ]
            }
        )
    return rows


def prompt_completion_rows(n: int = 32, seed: int = 1) -> list[dict[str, Any]]:
    """Plain ``prompt``/``completion`` SFT rows."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"What is {a} + {b}? ", "completion": f"<answer>{a + b}</answer>"})
    return rows


def arithmetic_rl_rows(n: int = 16, seed: int = 2) -> list[dict[str, Any]]:
    """RL rows: a ``prompt`` and the verifiable ``answer``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"What is {a} + {b}?", "answer": str(a + b)})
    return rows
