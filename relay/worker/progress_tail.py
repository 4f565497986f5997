"""Tail the trainer's progress file (RELAY_PROGRESS_FILE) incrementally.

The trainer appends one JSON line per step.  The worker reads only what was appended since the last
poll (a cheap ``read`` from a remembered offset, so polling every few hundred milliseconds costs
nothing), keeps a partial last line for the next poll, and starts over when the file is truncated
or replaced.  Each new line is what the watchdog calls progress; step and numeric fields feed reports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.ids import INT64_MAX, parse_step

log = logging.getLogger("relay.worker.progress")

_RESERVED = {"step", "ts", "epoch"}
_warned: set[str] = set()  # problems already logged once (a trainer repeats its mistake every step)


@dataclass
class ProgressLine:
    step: int
    ts: float
    metrics: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


class ProgressTail:
    """Reads new complete lines of one progress file; never raises on a missing or torn file."""

    def __init__(self, path: Path, *, from_end: bool = True) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""
        self.last: ProgressLine | None = None
        self.lines_seen = 0
        if from_end:
            self.skip_to_end()

    def skip_to_end(self) -> None:
        """Ignore what is already in the file (lines of a previous trainer)."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._offset, self._inode = 0, None
        else:
            self._offset, self._inode = st.st_size, st.st_ino
        self._partial = b""

    def poll(self) -> list[ProgressLine]:
        """The lines appended since the last poll, parsed; unparsable lines are skipped."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if self._inode is not None and st.st_ino != self._inode or st.st_size < self._offset:
            self._offset, self._partial = 0, b""  # replaced or truncated: read it from the start
        self._inode = st.st_ino
        if st.st_size == self._offset:
            return []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(st.st_size - self._offset)
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        out = []
        for raw in complete:
            parsed = parse_line(raw)
            if parsed is not None:
                out.append(parsed)
        if out:
            self.last = out[-1]
            self.lines_seen += len(out)
        return out


def _warn_once(kind: str, message: str, *args: Any) -> None:
    if kind not in _warned:
        _warned.add(kind)
        log.warning(message + " (further such lines are skipped silently)", *args)


def _as_float(value: Any) -> float | None:
    """A finite float from a JSON number, else None (bools, strings, NaN, +-inf, ints too big for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:  # an int of hundreds of digits
        return None
    return f if math.isfinite(f) else None


def parse_line(raw: bytes | str) -> ProgressLine | None:
    """One progress line -> ProgressLine, or None when it is not a JSON object with a valid step.

    Never raises: the trainer is a black box and its output is input.  A line whose step is not an
    integer in 0..INT64_MAX is skipped with a warning logged once."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    if "step" not in obj:
        return None
    step = parse_step(obj["step"])
    if step is None:
        _warn_once(
            "step",
            "progress line skipped: step must be an integer in 0..%d (got %s)",
            INT64_MAX,
            str(obj["step"])[:40],
        )
        return None
    ts = _as_float(obj.get("ts"))
    metrics: dict[str, float] = {}
    for k, v in obj.items():
        if k in _RESERVED:
            continue
        f = _as_float(v)
        if f is not None:
            metrics[k] = f
    return ProgressLine(step=step, ts=ts if ts is not None else time.time(), metrics=metrics, raw=obj)
