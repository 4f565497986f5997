"""Datasets of the built-in trainers: locate, read and check JSONL before any model loads; tokenize SFT rows.

Checking every row up front turns "KeyError in the collator after the 7B model took four minutes to
load" into one line naming the file, the line and the problem (exit code 2).  The SFT tokenization puts
the loss on completion / assistant tokens only: every other label is -100.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100


class DatasetError(ValueError):
    """The dataset cannot be used; str() is one line naming the file (and line) and the problem."""


# ----------------------------------------------------------------------------------------- locate


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    repo_type: str
    revision: str | None


def parse_hub_spec(spec: str) -> HubFile:
    """``hf://[datasets/|models/]owner/repo[@rev]/path/file.jsonl`` (no prefix: a dataset repo)."""
    rest = spec[len("hf://") :]
    repo_type = "dataset"
    for prefix, kind in (("datasets/", "dataset"), ("models/", "model")):
        if rest.startswith(prefix):
            rest, repo_type = rest[len(prefix) :], kind
            break
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise DatasetError(
            f"dataset: {spec!r} is not hf://[datasets/]owner/repo[@revision]/path/to/file.jsonl"
        )
    owner, repo, path = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    return HubFile(repo_id=f"{owner}/{repo}", filename=path, repo_type=repo_type, revision=revision or None)


def resolve_dataset(spec: str, *, token: str | None = None) -> Path:
    """A local JSONL path for ``spec``: the path itself, or the Hub file downloaded into the HF cache."""
    if spec.startswith("hf://"):
        hub = parse_hub_spec(spec)
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    repo_id=hub.repo_id,
                    filename=hub.filename,
                    repo_type=hub.repo_type,
                    revision=hub.revision,
                    token=token or os.environ.get("HF_TOKEN") or None,
                )
            )
        except Exception as exc:  # noqa: BLE001 - any download failure is one message for the user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatasetError(f"dataset: cannot download {spec}: {first}") from None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DatasetError(f"dataset: file not found: {path}")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSONL file; blank lines are skipped, anything else must be a JSON object."""
    rows: list[dict[str, Any]] = []
    try:
        fh = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"dataset: cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DatasetError(f"dataset {path} line {lineno}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise DatasetError(
                    f"dataset {path} line {lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            rows.append({"__line__": lineno, **obj})
    if not rows:
        raise DatasetError(f"dataset {path}: no rows")
    return rows


# ------------------------------------------------------------------------------------------ check


def _check_messages(msgs: Any, where: str, *, need_assistant: bool) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(msgs):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DatasetError(f"{where}: message {i} needs a string 'role' and a string 'content'")
    if need_assistant and not any(m["role"] == "assistant" for m in msgs):
        raise DatasetError(f"{where}: no assistant message, so there is nothing to learn")


def sft_row_kind(row: dict[str, Any], where: str) -> str:
    """``messages`` or ``prompt_completion``; raises DatasetError for anything else."""
    if "messages" in row:
        _check_messages(row["messages"], where, need_assistant=True)
        return "messages"
    if "prompt" in row and "completion" in row:
        p, c = row["prompt"], row["completion"]
        if isinstance(p, str) and isinstance(c, str):
            if not c:
                raise DatasetError(f"{where}: empty 'completion', so there is nothing to learn")
            return "prompt_completion"
        if isinstance(p, list) and isinstance(c, list):  # conversational prompt/completion
            _check_messages(p, where, need_assistant=False)
            _check_messages(c, where, need_assistant=True)
            return "messages"
        raise DatasetError(f"{where}: 'prompt' and 'completion' must both be strings or both message lists")
    keys = ", ".join(sorted(k for k in row if k != "__line__")) or "none"
    raise DatasetError(f"{where}: expected 'messages' or 'prompt' + 'completion' (keys: {keys})")


def check_sft_rows(rows: list[dict[str, Any]], path: Path) -> str:
    """Validate SFT rows; return the kind all rows share (one file, one format)."""
    kinds = {sft_row_kind(r, f"dataset {path} line {r['__line__']}") for r in rows}
    if len(kinds) > 1:
        raise DatasetError(f"dataset {path}: mixes chat 'messages' rows and plain 'prompt'/'completion' rows")
    return kinds.pop()


def check_rl_rows(rows: list[dict[str, Any]], path: Path, *, answer_fields: set[str]) -> None:
    """Validate RL rows: a ``prompt`` (string or messages) and every answer column an exact_match reward reads."""
    for r in rows:
        where = f"dataset {path} line {r['__line__']}"
        p = r.get("prompt")
        if isinstance(p, list):
            _check_messages(p, where, need_assistant=False)
        elif not isinstance(p, str) or not p:
            raise DatasetError(f"{where}: needs a 'prompt' (a string or a list of messages)")
        for field in answer_fields:
            if field not in r or r[field] is None:
                raise DatasetError(
                    f"{where}: missing '{field}', which the exact_match reward compares against"
                )


def load_sft_rows(spec: str) -> tuple[list[dict[str, Any]], str, Path]:
    path = resolve_dataset(spec)
    rows = read_jsonl(path)
    return rows, check_sft_rows(rows, path), path


def load_rl_rows(spec: str, *, answer_fields: set[str]) -> tuple[list[dict[str, Any]], Path]:
    path = resolve_dataset(spec)
    rows = read_jsonl(path)
    check_rl_rows(rows, path, answer_fields=answer_fields)
    return rows, path


# ----------------------------------------------------------------------------------------- tokenize


def _as_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in row:
        return row["messages"]
    return list(row["prompt"]) + list(row["completion"])


def _render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _assistant_char_spans(
    tokenizer: Any, messages: list[dict[str, str]], where: str
) -> tuple[str, list[tuple]]:
    """The rendered conversation and the character spans of every assistant turn (with its end tokens)."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start_text = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        end_text = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise DatasetError(
                f"{where}: the chat template does not render conversations prefix by prefix, so the "
                "assistant tokens cannot be located; set train.chat_template to one that does"
            )
        spans.append((len(start_text), len(end_text)))
    return full, spans


def tokenize_sft_row(
    tokenizer: Any, row: dict[str, Any], kind: str, max_len: int, where: str
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 outside the completion / assistant turns), truncated to ``max_len``."""
    if kind == "prompt_completion":
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None and (
            not completion_ids or completion_ids[-1] != tokenizer.eos_token_id
        ):
            completion_ids = completion_ids + [tokenizer.eos_token_id]
        ids = prompt_ids + completion_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    else:
        messages = _as_messages(row)
        text, spans = _assistant_char_spans(tokenizer, messages, where)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        for t, (s, e) in enumerate(enc["offset_mapping"]):
            if e > s and any(a <= s < b for a, b in spans):
                labels[t] = ids[t]
    return {"input_ids": ids[:max_len], "labels": labels[:max_len]}


def tokenize_sft(
    tokenizer: Any, rows: list[dict[str, Any]], kind: str, max_len: int, path: Path
) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenize every row in file order (a fixed order is what makes resume exact); drop rows whose
    completion was truncated away entirely.  Returns (examples, dropped)."""
    if kind == "messages" and not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            f"dataset {path}: rows are chat 'messages' but the tokenizer has no chat template; set train.chat_template"
        )
    if kind == "messages" and not getattr(tokenizer, "is_fast", False):
        raise DatasetError(
            "model: chat 'messages' need a fast tokenizer (tokenizer.json) to locate assistant tokens"
        )
    examples, dropped = [], 0
    for r in rows:
        ex = tokenize_sft_row(tokenizer, r, kind, max_len, f"dataset {path} line {r['__line__']}")
        if all(label == IGNORE_INDEX for label in ex["labels"]):
            dropped += 1
            continue
        examples.append(ex)
    if not examples:
        raise DatasetError(
            f"dataset {path}: every row's completion lies beyond max_seq_length={max_len}; raise train.max_seq_length"
        )
    return examples, dropped


class PadCollator:
    """Pads a batch to its longest row: pad_token_id for inputs, -100 for labels, 0 in the attention mask."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[i, :n] = torch.tensor(ex["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(ex["labels"], dtype=torch.long)
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
