"""SIGTERM handling shared by the built-in trainers (stdlib only, installed before torch is imported).

The handler only sets a flag; the Trainer callback acts on it at the end of the step in flight.  Before
the first step there is nothing new to save (the last completed step is the checkpoint we resumed from,
already committed), so a SIGTERM during imports or model loading exits 0 at once.
"""

from __future__ import annotations

import os
import signal
import sys


class StopSignal:
    """SIGTERM -> ``requested``; before ``training`` is set, exit 0 immediately."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.requested = False
        self.training = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, _frame: object) -> None:
        if self.requested:
            return  # the worker signals the whole group; torchrun forwards it again
        self.requested = True
        if not self.training:
            print(f"{self.prog}: SIGTERM before the first step: nothing new to save, exit 0", flush=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        print(f"{self.prog}: SIGTERM: saving at the end of the current step, then exit 0", flush=True)
