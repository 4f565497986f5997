"""SIGTERM handling for every instrumented trainer (stdlib only, installed before torch is imported).

The handler only sets a flag; the Trainer instrumentation acts on it at the end of the step in flight.
Before training begins there is nothing new to save (the last completed step is the checkpoint the run
resumed from, already committed), so a SIGTERM during imports, data preparation or model loading exits 0
at once -- unless the process has started children: then it is a launcher (``trl sft`` runs the script
under ``accelerate launch``, LLaMA-Factory under torchrun on several GPUs) whose child got the same
SIGTERM, so it keeps waiting for them and exits as they do.  The worker signals the whole process group,
and torchrun forwards the signal again, so the handler is idempotent.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

__all__ = ["StopSignal", "exit_process", "has_children"]


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` without the interpreter's teardown.

    Everything that matters is on disk when this is called (checkpoints fsynced and marked COMPLETE,
    progress lines flushed).  After training, native threads that torch.distributed and DeepSpeed leave
    behind can make C++ static destructors abort the process (SIGABRT, read by the worker as a crash), and
    a user's script would go on to its end-of-training export, eval or upload after a SIGTERM: neither is
    wanted, so flush the streams and logging, tear the process group down, and leave with ``os._exit``.
    """
    import logging

    if "torch" in sys.modules:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer already gone: nothing left to tear down cleanly
            pass
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said anyway
            pass
    os._exit(code)


def has_children() -> bool:
    """Whether this process has child processes (Linux /proc; False where it cannot tell)."""
    pid = os.getpid()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                if fh.read().strip():
                    return True
    except OSError:
        return False
    return False


class StopSignal:
    """SIGTERM -> ``requested``; before ``training`` is set, exit 0 immediately."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.requested = False
        self.training = False
        self.installed = False

    def install(self) -> None:
        """Take over SIGTERM (main thread only; a later handler installed by the program wins)."""
        signal.signal(signal.SIGTERM, self._handler)
        self.installed = True

    def _handler(self, signum: int, _frame: object) -> None:
        if self.requested:
            return  # the worker signals the whole group; torchrun forwards it again
        self.requested = True
        if not self.training:
            if has_children():
                print(f"{self.prog}: SIGTERM: waiting for the processes this launcher started", flush=True)
                return
            print(f"{self.prog}: SIGTERM before the first step: nothing new to save, exit 0", flush=True)
            exit_process(0)
        print(f"{self.prog}: SIGTERM: saving at the end of the current step, then exit 0", flush=True)
