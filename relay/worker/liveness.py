"""Is the trainer alive, and at which step?  The best evidence there is, for trainers of every kind.

The relay contract's progress lines (RELAY_PROGRESS_FILE) are the first and best evidence: the built-in
trainers and every instrumented transformers Trainer write one per step (and heartbeats while they start,
save or export).  A trainer that speaks no protocol at all still shows life: it prints (Megatron's
``iteration N/M | ...`` lines name the step too, see relay.worker.log_progress) and its checkpoints appear.
The ``liveness`` setting says what counts:

- ``progress``: progress lines only;
- ``auto`` (default): progress lines; until the trainer's first one, also its output and new checkpoints
  (a trainer that writes progress lines is judged by them alone, so a chatty but stuck one is caught);
- ``any``: all three, always.

The step shown is the newest progress line's; without one, the newest step its log names; without that,
the newest checkpoint's.  Hang detection (relay.worker.watchdog) is fed from here: silence on every counted
channel for ``hang_timeout_s`` is a hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.worker.log_progress import parse_log_line

if TYPE_CHECKING:
    from relay.worker.progress import RunProgress
    from relay.worker.progress_tail import ProgressLine, ProgressTail
    from relay.worker.trainer_log import TrainerLog

__all__ = ["Evidence", "Liveness"]

_OUTPUT = ("stdout", "stderr")


@dataclass(frozen=True)
class Evidence:
    alive: bool = False
    step: int | None = None
    metrics: dict[str, float] | None = None
    lines: tuple[ProgressLine, ...] = ()  # the protocol's progress lines of this poll (no heartbeats)


class Liveness:
    """Reads the progress file, the trainer's output and the newest checkpoint since the last poll."""

    def __init__(self, mode: str, tail: ProgressTail, tlog: TrainerLog, progress: RunProgress) -> None:
        self.mode = mode
        self.tail = tail
        self.tlog = tlog
        self.progress = progress
        self._seq = tlog.last_seq
        self._ckpt_step: int | None = None
        self.seen_progress_line = False

    def trainer_started(self) -> None:
        """A new trainer process: judge it on its own lines."""
        self._seq = self.tlog.last_seq
        self._ckpt_step = self.progress.checkpoint.step if self.progress.checkpoint is not None else None
        self.seen_progress_line = False

    def poll(self) -> Evidence:
        lines = self.tail.poll()
        entries = self.tlog.since(self._seq)
        if entries:
            self._seq = entries[-1].seq
        step: int | None = None
        metrics: dict[str, float] = {}
        alive = bool(lines)
        beat_step = None
        protocol = []
        for line in lines:  # heartbeats: alive, at the step reached; not a trainer that speaks the protocol
            if line.raw.get("heartbeat") is True:
                beat_step = line.step
            else:
                self.seen_progress_line = True
                step = line.step
                metrics = dict(line.metrics)
                protocol.append(line)
        if self.mode == "any" or (self.mode == "auto" and not self.seen_progress_line):
            shown, named = self._fallback(entries, metrics)
            alive = alive or shown
            step = named if step is None else step
        if step is None and beat_step is not None and beat_step >= self.progress.step:
            step = beat_step
        return Evidence(alive, step, metrics or None, tuple(protocol))

    def _fallback(self, entries: list, metrics: dict[str, float]) -> tuple[bool, int | None]:
        """(alive, step) from output lines and a new checkpoint; metrics their log lines name are added."""
        alive, step = False, None
        for entry in entries:
            if entry.stream not in _OUTPUT:
                continue
            alive = True
            got = parse_log_line(entry.line)
            if got is not None:
                metrics.update(got.metrics)
                step = got.step if got.step is not None else step
        ckpt = self.progress.checkpoint
        if ckpt is not None and ckpt.step != self._ckpt_step:
            self._ckpt_step = ckpt.step
            alive = True
            if step is None and ckpt.step > self.progress.step:
                step = ckpt.step
        return alive, step
