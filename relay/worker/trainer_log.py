"""The trainer's output as the worker keeps it: ``logs/trainer.log`` (rotated by size) and a numbered tail.

The launcher feeds it the trainer's stdout and stderr line by line; the worker adds its own notes
(restarts, kills, signals) so the file reads as one story.  The in-memory tail is numbered, so the
reporter ships each line to the commander once, and a failure message can quote the last lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("relay.worker.launcher")


@dataclass(frozen=True)
class LogEntry:
    seq: int
    ts: float
    stream: str  # "stdout" | "stderr" | "worker"
    line: str


class RotatingLog:
    """Appends text to ``path``; when it passes ``max_bytes`` it becomes ``path.1`` (older ones shift)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._size = self._fh.tell()
        self._failed = False

    def write(self, text: str) -> None:
        if self._fh.closed:
            return
        try:
            self._fh.write(text)
            self._fh.flush()
            self._failed = False
        except OSError as exc:  # a full volume must not stop training; said once, not on every line
            if not self._failed:
                log.warning("trainer log write failed: %s (the lines stay in the reports)", exc)
            self._failed = True
            return
        self._size += len(text.encode("utf-8", errors="replace"))
        if self._size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        try:
            if self.backups > 0:
                for i in range(self.backups - 1, 0, -1):
                    src = self.path.with_name(f"{self.path.name}.{i}")
                    if src.exists():
                        os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink(missing_ok=True)
        except OSError as exc:  # pragma: no cover
            log.warning("trainer log rotation failed: %s", exc)
        try:
            self._fh = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:  # the volume failed: the tail in memory (and the reports) carry on
            log.warning("trainer log %s cannot be reopened: %s", self.path, exc)
        self._size = 0

    def close(self) -> None:
        if not self._fh.closed:
            with contextlib.suppress(OSError):  # what could not be flushed is lost, not a crash
                self._fh.close()


class TrainerLog:
    """The trainer's output: rotated file on the volume plus a numbered in-memory tail."""

    def __init__(self, logs_dir: Path, *, max_bytes: int, backups: int, tail_lines: int = 300) -> None:
        self.file = RotatingLog(logs_dir / "trainer.log", max_bytes, backups)
        self._tail: deque[LogEntry] = deque(maxlen=tail_lines)
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, stream: str, line: str) -> None:
        line = line.rstrip("\r\n")
        if "\r" in line:  # progress bars redraw with \r: keep what was last shown
            line = line.rsplit("\r", 1)[-1]
        with self._lock:
            self._seq += 1
            self._tail.append(LogEntry(self._seq, time.time(), stream, line))
            if stream == "worker":
                self.file.write(f"[relay-worker] {line}\n")
            else:
                self.file.write(line + "\n")

    def note(self, line: str) -> None:
        """A worker message in the trainer's timeline (restarts, kills), so logs read as one story."""
        self.add("worker", line)

    def since(self, seq: int, limit: int = 200) -> list[LogEntry]:
        with self._lock:
            return [e for e in self._tail if e.seq > seq][-limit:]

    def tail(self, n: int = 50, *, streams: Sequence[str] = ("stdout", "stderr")) -> list[str]:
        with self._lock:
            return [e.line for e in self._tail if e.stream in streams][-n:]

    @property
    def last_seq(self) -> int:
        return self._seq

    def close(self) -> None:
        self.file.close()
