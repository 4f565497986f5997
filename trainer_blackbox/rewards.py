"""Verifiable rewards for the built-in GRPO trainer, defined in the ``train.rewards`` list (stdlib only).

``exact_match``: the answer extracted from the completion (group 1 of ``pattern``; by default the text in
``<answer>...</answer>``, else the last number) equals the row's reference answer (numbers compare as
numbers, so "12.0" matches "12").  ``format``: 1.0 when the whole completion matches ``pattern`` (by
default exactly one ``<answer>...</answer>`` block, whitespace around it allowed).  Each returns one
float per completion, as TRL's reward functions do; their weights go to GRPOConfig.reward_weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_ANSWER_PATTERN = r"<answer>(.*?)</answer>"
DEFAULT_FORMAT_PATTERN = r"\s*<answer>[^<]*</answer>\s*"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

RewardFunc = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """TRL hands completions as strings, or as message lists for chat prompts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def extract_answer(text: str, pattern: str | None = None) -> str | None:
    """The answer in ``text``: group 1 (or the whole match) of ``pattern``; by default the <answer> tag, else
    the last number."""
    if pattern is not None:
        m = re.search(pattern, text, flags=re.DOTALL)
        if m is None:
            return None
        return (m.group(1) if m.groups() else m.group(0)).strip()
    m = re.search(DEFAULT_ANSWER_PATTERN, text, flags=re.DOTALL)
    if m is not None:
        return m.group(1).strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def answers_equal(got: str | None, want: Any) -> bool:
    if got is None or want is None:
        return False
    a, b = got.strip().rstrip(".").replace(",", ""), str(want).strip().rstrip(".").replace(",", "")
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def make_exact_match(answer_field: str = "answer", pattern: str | None = None) -> RewardFunc:
    def exact_match(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        answers = kwargs.get(answer_field) or [None] * len(completions)
        return [
            1.0 if answers_equal(extract_answer(completion_text(c), pattern), a) else 0.0
            for c, a in zip(completions, answers, strict=True)
        ]

    exact_match.__name__ = "exact_match"
    return exact_match


def make_format(pattern: str | None = None) -> RewardFunc:
    regex = re.compile(pattern or DEFAULT_FORMAT_PATTERN, flags=re.DOTALL)

    def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [1.0 if regex.fullmatch(completion_text(c)) else 0.0 for c in completions]

    format_reward.__name__ = "format"
    return format_reward


def build_rewards(specs: Sequence[Any]) -> tuple[list[RewardFunc], list[float]]:
    """Reward functions and weights for ``train.rewards`` (RewardSpec objects or equivalent mappings)."""
    funcs: list[RewardFunc] = []
    weights: list[float] = []
    for spec in specs:
        get = spec.get if isinstance(spec, dict) else lambda k, d=None, s=spec: getattr(s, k, d)
        kind = get("type")
        if kind == "exact_match":
            funcs.append(make_exact_match(get("answer_field", "answer") or "answer", get("pattern")))
        elif kind == "format":
            funcs.append(make_format(get("pattern")))
        else:
            raise ValueError(f"unknown reward type {kind!r}")
        weights.append(float(get("weight", 1.0)))
    return funcs, weights
