"""Log lines that may repeat thousands of times a second (a full disk under every request, a flood of
accept errors) are written at most once per interval, each saying how many were held back.

A commander whose store fails, or whose socket is flooded by hostile clients, must still say so, but a
log that takes 275,000 lines to say it is itself a failure (it fills the disk the store needs, and it
buries the one line that matters).  The first occurrence of a kind is written at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """One logger, one interval: :meth:`log` writes the first line of a ``kind`` at once, then at most one
    line of that kind every ``every_s`` seconds (monotonic), with the count of lines held back since."""

    def __init__(
        self, logger: logging.Logger, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Write ``message % args`` unless a line of ``kind`` was written less than ``every_s`` ago; True
        when written."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        if held:
            message += f" ({held} more like it in the last {now - last:.0f}s)"  # type: ignore[operator]
        self.logger.log(level, message, *args)
        return True

    def forget(self, kind: str) -> None:
        """The condition of ``kind`` is over: its next occurrence is written at once."""
        self._last.pop(kind, None)
        self._held.pop(kind, None)
