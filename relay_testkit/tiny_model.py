"""Test-side name of the tiny model builder, which lives in ``trainer_blackbox.tiny``.

The builder ships in the package because ``relayctl demo`` needs it outside the test tree; tests import
it from here so they read as tests (a tiny Llama + a byte-level BPE tokenizer with a chat template,
built locally, no downloads; plus JSONL writers for SFT and RL rows).
"""

from trainer_blackbox.tiny import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    arithmetic_rl_rows,
    build_tiny_model,
    build_tokenizer,
    chat_rows,
    prompt_completion_rows,
    write_jsonl,
)

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "arithmetic_rl_rows",
    "build_tiny_model",
    "build_tokenizer",
    "chat_rows",
    "prompt_completion_rows",
    "write_jsonl",
]
