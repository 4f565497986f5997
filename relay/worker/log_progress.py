"""Progress from a trainer's own log lines, for trainers that write no progress file (pure, no I/O).

Megatron-LM (and trainers on its training loop) prints one line per ``--log-interval`` iterations::

     [2026-05-01 12:00:00] iteration      100/    1000 | consumed samples:        12800 |
     elapsed time per iteration (ms): 1234.5 | learning rate: 1.000000E-05 | global batch size:   128 |
     lm loss: 1.234567E+00 | loss scale: 1.0 | grad norm: 0.123 | number of skipped iterations:   0 | ...

(one line in the log).  ``iteration N`` counts the optimizer steps completed, the same number Megatron
names its checkpoint ``iter_%07d`` after, so it is the relay step.  slime (RL on Megatron, driven by Ray)
logs Python dicts instead: ``perf N: {...}`` once rollout N is trained (its checkpoints are
``iter_%07d`` of the rollout id, so N is the relay step), ``step K: {'train/loss': ...}`` per optimizer
step inside a rollout, and ``rollout N: {...}`` for the rollout's rewards.

``parse_log_line`` turns one line into a :class:`LogProgress` (a step when the line names one, and its
numeric metrics under the relay's names: ``loss``, ``learning_rate``, ``grad_norm``...), or None for any
other line.  Never raises: the trainer's output is input.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field

__all__ = ["LogProgress", "parse_log_line"]

MAX_LINE = 64 * 1024

_MEGATRON = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|(.*)$")
_SLIME = re.compile(r"\b(perf|step|rollout)\s+(\d+):\s*(\{.*\})\s*$")
_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")

#: Megatron's field names -> the relay's metric names (anything else: lower case, spaces to underscores).
MEGATRON_NAMES = {
    "lm loss": "loss",
    "learning rate": "learning_rate",
    "grad norm": "grad_norm",
    "global batch size": "global_batch_size",
    "consumed samples": "consumed_samples",
    "elapsed time per iteration (ms)": "iteration_ms",
    "throughput per gpu (tflop/s/gpu)": "tflops_per_gpu",
    "loss scale": "loss_scale",
    "params norm": "params_norm",
    "number of skipped iterations": "skipped_iterations",
    "number of nan iterations": "nan_iterations",
}
#: slime's dict keys -> the relay's metric names.
SLIME_NAMES = {
    "train/loss": "loss",
    "train/grad_norm": "grad_norm",
    "train/lr-pg_0": "learning_rate",
    "train/step": "optimizer_step",
}


@dataclass(frozen=True)
class LogProgress:
    """What one log line says: the step it reports (None when it names none) and its metrics."""

    step: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    source: str = "megatron"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _megatron(m: re.Match[str]) -> LogProgress:
    step, total = int(m.group(1)), int(m.group(2))
    metrics: dict[str, float] = {"total_steps": float(total)}
    for part in m.group(3).split("|"):
        key, sep, raw = part.partition(":")
        raw = raw.strip()
        if not sep or not _NUMBER.match(raw):
            continue
        name = key.strip().lower()
        value = _finite(float(raw))
        if value is not None and name:
            metrics[MEGATRON_NAMES.get(name, re.sub(r"\s+", "_", name))] = value
    return LogProgress(step, metrics, "megatron")


def _slime(m: re.Match[str]) -> LogProgress | None:
    kind, number = m.group(1), int(m.group(2))
    try:
        doc = ast.literal_eval(m.group(3))
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    if not isinstance(doc, dict):
        return None
    metrics: dict[str, float] = {}
    for key, value in doc.items():
        f = _finite(value)
        if isinstance(key, str) and f is not None:
            metrics[SLIME_NAMES.get(key, key)] = f
    if kind == "step":  # an optimizer step inside a rollout: metrics, not the relay step
        metrics["optimizer_step"] = float(number)
        return LogProgress(None, metrics, "slime")
    return LogProgress(number if kind == "perf" else None, metrics, "slime")


def parse_log_line(line: str) -> LogProgress | None:
    """The progress one trainer log line reports, or None when it reports none."""
    if not isinstance(line, str) or len(line) > MAX_LINE:
        return None
    m = _MEGATRON.search(line)
    if m is not None:
        return _megatron(m)
    m = _SLIME.search(line)
    if m is not None:
        return _slime(m)
    return None
