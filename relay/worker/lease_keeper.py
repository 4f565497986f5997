"""Lease renewal and self-fencing: the worker stops training before anyone else may be granted the run.

The commander grants a lease for ``ttl_s`` seconds, counted from when it handled the request.  The
worker counts from when it *sent* the last successful request (never later than the commander's
clock started), so its idea of the expiry is never later than the commander's.  Two things fence
the worker, whichever comes first:

- the commander answers 409 to a renew or a report: another epoch owns the run (``Fence.trip``
  from the loop), or the remote refuses a push for the same reason (from the syncer's thread);
- no renewal has succeeded for ``ttl - margin`` seconds (the commander is unreachable or paused,
  the network is partitioned).  A *deadman thread* watches this deadline, so even an event loop
  stalled behind something slow cannot keep a trainer alive past its lease.

The same deadline is also held outside this process, by the trainer's guard
(:mod:`relay.worker.guard`): the keeper moves it forward after each successful renewal
(:meth:`LeaseKeeper.watch_deadline`), and the guard kills the trainer when it passes even if this
whole process is stopped.  The deadman thread is the second line.

Tripping the fence kills the trainer's process group at once (SIGTERM, SIGKILL after a short
grace), stops the syncer, and wakes the agent, which commits and syncs nothing more and exits
non-zero.  Whether the margin is long enough for the kill grace, and the TTL for the margin, is
decided by :mod:`relay.worker.timing` before a lease is used.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from relay.worker.fence import Fence
from relay.worker.lease import Lease

log = logging.getLogger("relay.worker.lease")


class LeaseKeeper:
    """Renews one lease every ``renew_interval_s`` and fences the worker when it can no longer prove it holds it."""

    def __init__(
        self,
        client: Any,
        lease: Lease,
        *,
        safety_margin_s: float,
        fence: Fence,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.lease = lease
        ttl_s = lease.ttl_s
        granted_sent_at = lease.sent_at
        self.ttl_s = ttl_s
        self.renew_interval_s = max(0.05, lease.renew_interval_s)
        self.margin_s = max(0.0, safety_margin_s)
        self.fence = fence
        self.clock = clock
        self.cancel_requested = asyncio.Event()
        self.renewals = 0
        self.failures = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._last_ok_sent = granted_sent_at
        self._deadline = granted_sent_at + ttl_s - self.margin_s
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._watcher: Callable[[float], None] | None = None

    # -- deadline ---------------------------------------------------------------------------------

    @property
    def deadline(self) -> float:
        """Monotonic time at which the worker fences itself unless a renewal succeeds first."""
        with self._lock:
            return self._deadline

    def remaining_s(self) -> float:
        return self.deadline - self.clock()

    def watch_deadline(self, fn: Callable[[float], None] | None) -> None:
        """``fn(deadline)`` now and after each successful renewal (the trainer's guard); None: stop.
        Called on the event loop, like the renewals, so no renewal can slip between the two."""
        self._watcher = fn
        if fn is not None:
            fn(self.deadline)

    def _renewed(self, sent_at: float, ttl_s: float) -> None:
        with self._lock:
            if sent_at <= self._last_ok_sent:
                return
            self._last_ok_sent = sent_at
            self.ttl_s = ttl_s
            self._deadline = deadline = sent_at + ttl_s - self.margin_s
        watcher = self._watcher
        if watcher is not None:
            watcher(deadline)

    def _deadman(self) -> None:
        while not self._stop.is_set():
            remaining = self.remaining_s()
            if remaining <= 0:
                with self._lock:
                    silent = self.clock() - self._last_ok_sent
                self.fence.trip(
                    f"no successful lease renewal for {silent:.1f}s (ttl {self.ttl_s:g}s minus margin "
                    f"{self.margin_s:g}s); last error: {self.last_error or 'none'}"
                )
                return
            self._stop.wait(min(remaining, 1.0))

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._deadman, name="relay-lease-deadman", daemon=True)
        self._thread.start()
        self._task = asyncio.ensure_future(self._renew_loop())

    async def stop(self) -> None:
        """Stop renewing (just before release, or after fencing)."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _renew_loop(self) -> None:
        from relay.client import CommanderError, Fenced

        req = self.lease.renew_request()
        delay = self.renew_interval_s
        while not self._stop.is_set() and not self.fence.tripped:
            await asyncio.sleep(delay)
            if self._stop.is_set() or self.fence.tripped:
                return
            sent = self.clock()
            budget = max(0.05, self.deadline - sent)
            try:
                resp = await asyncio.wait_for(
                    self.client.renew(req), timeout=min(budget, max(1.0, self.ttl_s))
                )
            except Fenced as exc:
                self.fence.trip(f"the commander refused the lease renewal: {exc}")
                return
            except (CommanderError, asyncio.TimeoutError, OSError) as exc:
                self.failures += 1
                self.last_error = str(exc) or type(exc).__name__
                log.warning(
                    "lease renewal failed (%s); %.1fs left before self-fencing",
                    self.last_error,
                    self.remaining_s(),
                )
                # retry sooner than the interval, but not in a tight loop
                delay = min(self.renew_interval_s, max(0.1, self.remaining_s() / 4)) * random.uniform(
                    0.8, 1.0
                )
                continue
            if not getattr(resp, "ok", True):
                self.fence.trip("the commander answered the renewal with ok=false")
                return
            self.renewals += 1
            self.last_error = None
            self._renewed(sent, float(resp.ttl_s))
            if resp.cancel_requested and not self.cancel_requested.is_set():
                log.info("the commander asks to cancel run %s", self.lease.run_id)
                self.cancel_requested.set()
            delay = self.renew_interval_s
