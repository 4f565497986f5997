"""Heartbeat lines while an instrumented trainer is alive but not stepping (stdlib only).

Between its start and its first optimizer step a trainer imports its libraries, reads and tokenizes data
and loads the model: minutes of silence on a large model, and a relay worker that must tell a hung trainer
from a slow one.  Saving a checkpoint of a large model, or the final export, is just as silent.  So while
the trainer is in one of those phases a daemon thread appends ``{"step": S, "ts", "epoch", "heartbeat":
true}`` to RELAY_PROGRESS_FILE every RELAY_HEARTBEAT_S seconds (default 2), S being the last step reached
(the resumed one at start).  During training the per-step lines are the signal: a step that never ends (a
rank stuck in a collective) writes nothing, and the worker's hang detection catches it.

A Python process that never builds a transformers Trainer (a Megatron or slime script also gets the
instrumentation) would otherwise beat forever and hide a hang: before ``transformers.trainer`` is imported,
a process beats for at most RELAY_HEARTBEAT_STARTUP_S (the worker passes its ``startup_timeout_s``, at
least 60 s); then it is judged by its output, its log lines and its checkpoints.

Only the process that trains speaks: a launcher waiting for its children (``accelerate launch``, torchrun
run by a CLI) and multiprocessing children (data workers) stay silent, so neither can mask a stuck trainer.

When a trainer that finished training exits, the interpreter's own teardown (garbage-collecting a model and
its data sets) can take many seconds with no Python thread left to beat.  So at exit a tiny helper
(``python -S``: no imports, no sitecustomize) goes on beating for the exiting process until it is gone, for
at most EXIT_BEAT_MAX_S.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from relay_inject.progress import ProgressWriter
from relay_inject.stop import has_children

__all__ = ["Heartbeat", "resumed_step"]

STARTING, TRAINING, SAVING, EXPORTING = "starting", "training", "saving", "exporting"
EXIT_BEAT_MAX_S = 600.0
_EXIT_BEAT = """
import json, os, sys, time
pid, path, epoch, step, period, limit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
end = time.monotonic() + limit
while time.monotonic() < end:
    time.sleep(period)
    try:
        os.kill(pid, 0)
    except OSError:
        break
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": step, "ts": time.time(), "epoch": epoch, "heartbeat": True}) + "\\n")
"""


def resumed_step(resume_from: Path | None) -> int:
    """The step a resumed run starts from (``trainer_state.json``'s ``global_step``), else 0."""
    if resume_from is None:
        return 0
    try:
        state = json.loads((resume_from / "trainer_state.json").read_text(encoding="utf-8"))
        step = state.get("global_step", 0)
        return step if isinstance(step, int) and step >= 0 else 0
    except (OSError, ValueError, AttributeError):
        return 0


def _seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


def _interval() -> float:
    return _seconds("RELAY_HEARTBEAT_S", 2.0)


class Heartbeat:
    """The phase of this process and the thread that reports it while it is not ``training``."""

    def __init__(self, progress: ProgressWriter, step: int) -> None:
        self.progress = progress
        self.step = step
        self.phase = STARTING
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None or self.progress.path is None:
            return
        self._thread = threading.Thread(target=self._run, name="relay-heartbeat", daemon=True)
        self._thread.start()

    def set(self, phase: str, step: int | None = None) -> None:
        if step is not None:
            self.step = step
        self.phase = phase

    def _run(self) -> None:
        import multiprocessing
        import sys
        import time

        if multiprocessing.parent_process() is not None:
            return  # a data worker or pool process: its parent is the trainer
        period = _interval()
        startup_end = time.monotonic() + _seconds("RELAY_HEARTBEAT_STARTUP_S", 600.0)
        while not self._wake.wait(period):
            if self.phase == TRAINING or has_children():
                continue
            if (
                self.phase == STARTING
                and "transformers.trainer" not in sys.modules
                and time.monotonic() > startup_end
            ):
                continue  # no Trainer in sight: not a process this heartbeat speaks for
            self.progress.write(self.step, heartbeat=True)

    def stop(self) -> None:
        self._wake.set()

    def at_exit(self) -> None:
        """atexit: a trainer that finished training is exiting; keep beating through the teardown."""
        if self.phase != EXPORTING or self.progress.path is None:
            return
        import subprocess
        import sys

        self.stop()
        args = [str(os.getpid()), str(self.progress.path), str(self.progress.epoch), str(self.step)]
        try:
            subprocess.Popen(
                [sys.executable, "-S", "-c", _EXIT_BEAT, *args, str(_interval()), str(EXIT_BEAT_MAX_S)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError:  # no helper: the teardown is then silent, as without the relay
            pass
