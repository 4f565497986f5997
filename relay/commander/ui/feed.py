"""The runs feed: one snapshot of every run per tick, shared by every open dashboard, diffed into changes.

However many tabs are open, the commander builds the run list once per tick (and not at all when no
tab is open), compares it with the previous one, and hands each open stream only the runs that
changed.  A tab that cannot keep up (its queue is full) is dropped: its browser reconnects and starts
again from a full snapshot, so a slow client never holds memory or delays anyone else.

Fields that move on their own (``last_renew_age_s`` grows every second, ``lease_expires_at`` is
recomputed from the monotonic clock on each read) are left out of the comparison: the browser
computes the renew age from ``last_renew_at`` and the commander's clock (``now``), which every
message carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.schema import RunList

log = logging.getLogger("relay.commander.ui")

TICK_S = 1.0
QUEUE_DEPTH = 32
#: Recomputed on every read, so never a reason to send a run again.
VOLATILE = ("last_renew_age_s", "lease_expires_at")


def sse_frame(event: str, data: Any) -> bytes:
    """One server-sent event; JSON never contains a raw newline, so ``data`` is one line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class RunsChange:
    """What changed between two ticks: runs to (re)draw, runs gone, and the commander's clock."""

    runs: list[dict[str, Any]]
    removed: list[str]
    now: float
    full: bool = False

    def message(self) -> dict[str, Any]:
        return {"full": self.full, "runs": self.runs, "removed": self.removed, "now": self.now}

    @functools.cached_property
    def frame(self) -> bytes:
        """The ``runs`` SSE message, serialised once however many streams send it."""
        return sse_frame("runs", self.message())

    def changed_ids(self) -> set[str]:
        return {run["run_id"] for run in self.runs}


@dataclass(eq=False)  # compared and hashed by identity: each open stream is its own
class Subscription:
    """One open stream's place in the feed: its queue, and whether the feed gave up on it."""

    queue: asyncio.Queue[RunsChange] = field(default_factory=lambda: asyncio.Queue(QUEUE_DEPTH))
    dropped: bool = False


class RunsFeed:
    """Polls ``snapshot()`` every ``tick_s`` while anyone listens and fans the differences out."""

    def __init__(self, snapshot: Callable[[], RunList], tick_s: float = TICK_S) -> None:
        self._snapshot = snapshot
        self.tick_s = tick_s
        self._subs: set[Subscription] = set()
        self._last: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # run id -> (stable, moving)
        self._last_now = 0.0
        self._full: RunsChange | None = None
        self._task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    @property
    def listeners(self) -> int:
        return len(self._subs)

    def subscribe(self) -> tuple[Subscription, RunsChange]:
        """Join the feed: the full current list now, then only changes (through ``sub.queue``)."""
        if self._task is None or self._task.done():
            self._take()  # nobody listened: the last snapshot is stale
            self._task = asyncio.get_running_loop().create_task(self._run())
        sub = Subscription()
        self._subs.add(sub)
        if self._full is None:  # one snapshot (and one serialisation) for every tab that opens in a tick
            runs = [{**stable, **moving} for stable, moving in self._last.values()]
            self._full = RunsChange(runs=runs, removed=[], now=self._last_now, full=True)
        return sub, self._full

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    async def close(self) -> None:
        """Tell every stream to end (commander shutdown) and stop polling."""
        self.closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _take(self) -> RunsChange:
        """Read the runs now and return what differs from the previous read."""
        listing = self._snapshot()
        current: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        changed = []
        for run in listing.runs:
            stable = run.model_dump(mode="json")
            moving = {name: stable.pop(name) for name in VOLATILE}
            current[run.run_id] = (stable, moving)
            previous = self._last.get(run.run_id)
            if previous is None or previous[0] != stable:
                changed.append({**stable, **moving})
        removed = [rid for rid in self._last if rid not in current]
        self._last, self._last_now, self._full = current, listing.now, None
        return RunsChange(runs=changed, removed=removed, now=listing.now)

    async def _run(self) -> None:
        while self._subs and not self.closing.is_set():
            await asyncio.sleep(self.tick_s)
            try:
                change = self._take()
            except Exception:
                log.exception("dashboard feed: could not read the runs; retrying")
                continue
            for sub in list(self._subs):
                try:
                    sub.queue.put_nowait(change)
                except asyncio.QueueFull:
                    sub.dropped = True
                    self._subs.discard(sub)
        self._task = None
