"""Progress lines: one JSON object per optimizer step, appended and flushed at once (stdlib only).

The worker tails RELAY_PROGRESS_FILE to see that training advances (hang detection) and to report
metrics, so a line must be complete and visible the moment the step is done, and must parse as
strict JSON (no NaN): non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["ProgressWriter", "read_progress"]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _clean(value.item())
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class ProgressWriter:
    """Appends ``{"step", "ts", "epoch", ...metrics}`` lines to one file; a no-op when path is None."""

    def __init__(self, path: Path | None, epoch: int) -> None:
        self.path = path
        self.epoch = epoch
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()  # the heartbeat thread writes too
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the trainer

    def write(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Append the line for ``step`` (metrics whose value is None are left out); return it."""
        line: dict[str, Any] = {"step": int(step), "ts": time.time(), "epoch": self.epoch}
        for key, value in metrics.items():
            if value is not None and key not in line:
                line[key] = _clean(value)
        with self._lock:
            if self._fh is not None:
                self._fh.write(json.dumps(line, allow_nan=False) + "\n")
                self._fh.flush()
        return line

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_progress(path: Path, *, heartbeats: bool = False) -> list[dict[str, Any]]:
    """Every parseable line of a progress file (tests and the bench read them back); heartbeat lines
    (alive, no new step: relay_inject.heartbeat) only when asked for."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and (heartbeats or obj.get("heartbeat") is not True):
            out.append(obj)
    return out
