"""The fence: a one-way switch that ends everything one lease does, from whichever thread learns first.

Five things can learn that this worker no longer holds its lease: the lease keeper (a renewal refused
with 409, or no successful renewal before the deadline), the reporter (a report refused with 409), the
syncer (the remote holds a newer epoch), the guard, and the handoff (a release refused).  Whoever learns
first trips the fence; every component that must stop registers a hook (kill the trainer, stop the
syncer) and waiters on the event loop wake.  Hooks run *before* anything is logged, so a stalled log
pipe can never delay a kill.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("relay.worker.lease")


class Fence:
    """A one-way switch: once tripped (from any thread), every registered hook runs once and waiters wake."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._hooks: dict[str, Callable[[], Any]] = {}
        self._event = asyncio.Event()
        self.reason: str | None = None
        self.tripped_at: float | None = None

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def set_hook(self, name: str, fn: Callable[[], Any] | None) -> None:
        """Register what to do on tripping; runs at once if already tripped (closes the launch race)."""
        with self._lock:
            if fn is None:
                self._hooks.pop(name, None)
                return
            self._hooks[name] = fn
            run_now = self.tripped
        if run_now:
            _safe(fn)

    def trip(self, reason: str) -> bool:
        """Fence the worker; True if this call did it. Safe from any thread."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
            self.tripped_at = time.monotonic()
            hooks = list(self._hooks.values())
        for fn in hooks:  # kill first: logging may block on a stalled stderr pipe
            _safe(fn)
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass
        log.error("FENCED: %s", reason)
        return True

    async def wait(self) -> str:
        await self._event.wait()
        assert self.reason is not None
        return self.reason


def _safe(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # pragma: no cover - a hook must never stop the others
        log.exception("fence hook failed")
