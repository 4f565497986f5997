"""SIGTERM and SIGINT as the worker reads them: the first asks for a graceful stop, the second forces it.

A pod's preemption notice is SIGTERM (``docker stop``, RunPod, a spot reclaim), a laptop's is Ctrl-C.
The first one asks whoever holds a run to stop the trainer gracefully (it saves), commit and sync the
checkpoint and release the lease; a second one means "now": kill the trainer and release without
waiting.  The agent owns one :class:`StopSignals` and hands it to each run session, so the session
reads the signal state without knowing the agent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

log = logging.getLogger("relay.worker")


class StopSignals:
    """The stop requests this process has received, as asyncio events plus when and which signal."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.stop_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        self.name: str | None = None
        self.at: float | None = None  # monotonic time of the first signal
        #: set while a run is held, so a signal says what it will do (stop a trainer, or just exit)
        self.holding_run = False
        self._installed: list[int] = []

    @property
    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    def grace_left(self, started: float | None = None) -> float:
        """What is left of ``grace_s``, counted from the signal (or from ``started``, for a cancel)."""
        origin = self.at if self.at is not None else started
        if origin is None:
            return self.grace_s
        return max(0.0, origin + self.grace_s - time.monotonic())

    def receive(self, signum: int) -> None:
        """Handle one SIGTERM/SIGINT (the loop's signal handler; tests call it directly)."""
        name = signal.Signals(signum).name
        if not self.stop_requested.is_set():
            self.name = name
            self.at = time.monotonic()
            if self.holding_run:
                log.warning(
                    "%s: stopping the trainer gracefully (up to %gs), then handing the run on",
                    name,
                    self.grace_s,
                )
            else:
                log.warning("%s: no run is held; exiting", name)
            self.stop_requested.set()
        else:
            log.warning("%s again: killing the trainer now and releasing without waiting", name)
            self.force_requested.set()

    def install(self) -> None:
        """Route SIGTERM and SIGINT of this process here (only possible from the main thread)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.receive, sig)
                self._installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
                pass

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()
