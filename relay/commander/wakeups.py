"""Long-polled acquires: parked until a change could make them grantable, and the clock that ends
each lease at its own expiry time so that the change happens on time.

A waiting pod sends its acquire with ``wait_s`` (``AcquireRequest``).  When the answer would be "held"
(a named run) or "nothing waiting" (pool mode), :meth:`Wakeups.acquire` parks the request as one
future, keyed by what it waits for, and asks again when woken: the named run changed (released,
expired, cancelled), or, for a pool worker, some run became waiting (submitted, released to the queue,
expired).  The lease manager and run control report those changes (:meth:`Wakeups.run_changed`, through
``LeaseManager.watch``).  When the wait ends without a grant the answer is the refusal of the last try,
exactly what an acquire without ``wait_s`` answers.

Expiry wakes waiters at the lease's expiry time, not at the sweeper's next pass: :class:`ExpiryClock`
keeps one heap entry per live lease and one timer for the earliest.  Renewals do not touch it (the
renewal path stays a dict lookup): when an entry comes due and its lease was renewed meanwhile, the
entry is pushed again at the new expiry, so the clock does one cheap step per lease per TTL.

A parked acquire costs a future and a timer handle besides its idle connection: no task, no polling.
A waiter whose client went away is never granted anything (``connected`` is checked after each wake;
``relayctl serve`` also cancels the handler of a closed connection).  Everything here runs on the
event loop's thread, like the lease manager, so a woken waiter's check-then-grant is atomic.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.commander import runs
from relay.commander.errors import LeaseHeldError, NoWaitingRunError

if TYPE_CHECKING:
    from relay.commander.lease_rules import LiveLease
    from relay.commander.leases import Grant, LeaseManager
    from relay.commander.store import RunRow
    from relay.schema import AcquireRequest

log = logging.getLogger("relay.commander")

#: refusals a long poll waits out; any other answer (closed run, mode mismatch, bad request) is at once
WAITABLE = (LeaseHeldError, NoWaitingRunError)
#: the expiry timer fires this long after the due time, so a lease is never found "not yet expired"
EXPIRY_SLACK_S = 0.001


class Waiters:
    """Parked acquires: futures keyed by the run they name, or by the mode of a pool worker."""

    def __init__(self) -> None:
        self._by_run: dict[str, dict[asyncio.Future[None], None]] = {}
        self._by_mode: dict[str | None, dict[asyncio.Future[None], None]] = {}

    def count(self) -> int:
        """How many acquires are parked now (metrics, tests)."""
        return sum(map(len, self._by_run.values())) + sum(map(len, self._by_mode.values()))

    async def wait(self, run_id: str | None, mode: str | None, timeout_s: float) -> None:
        """Until woken or ``timeout_s`` passed, whichever is first (a cancelled caller is removed)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        table, key = (self._by_run, run_id) if run_id is not None else (self._by_mode, mode)
        bucket = table.setdefault(key, {})  # type: ignore[arg-type]
        bucket[fut] = None  # a dict keeps arrival order: the longest waiter is woken (and asks) first
        timer = loop.call_later(timeout_s, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            bucket.pop(fut, None)
            if not bucket and table.get(key) is bucket:  # type: ignore[arg-type]
                del table[key]  # type: ignore[arg-type]

    def wake_run(self, run_id: str) -> None:
        """Everyone waiting for this named run asks again."""
        for fut in self._by_run.get(run_id, {}):
            _resolve(fut)

    def wake_pool(self, mode: str | None) -> None:
        """Pool workers that could take a waiting run of ``mode`` ask again (None: a run for any mode)."""
        for key, bucket in self._by_mode.items():
            if mode is None or key is None or key == mode:
                for fut in bucket:
                    _resolve(fut)

    def wake_all(self) -> None:
        """Shutting down: every parked acquire answers now."""
        for table in (self._by_run, self._by_mode):
            for bucket in table.values():
                for fut in bucket:
                    _resolve(fut)


def _park_s(refusal: Exception, remaining: float) -> float:
    """How long a refused acquire parks: until woken, or at most ``remaining``; a run held back by no
    lease but by time (a commander whose state is behind, ``relay.commander.lost_state``) is asked
    again the moment that hold ends, since no release or expiry will wake it."""
    if isinstance(refusal, LeaseHeldError) and refusal.holder is None:
        return min(remaining, refusal.retry_after_s + EXPIRY_SLACK_S)
    return remaining


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ExpiryClock:
    """Ends each live lease at its expiry time (see the module docstring); ``start`` needs the loop."""

    def __init__(self, leases: LeaseManager) -> None:
        self.leases = leases
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._armed_at = self._loop = None

    def reset(self, leases: list[LiveLease]) -> None:
        """Forget every entry and watch ``leases`` (the manager rebuilt its live leases from disk)."""
        self._heap = [(lease.expires_at, next(self._seq), lease.run_id, lease.lease_id) for lease in leases]
        heapq.heapify(self._heap)
        self._arm(force=True)

    def watch(self, lease: LiveLease) -> None:
        """A new live lease: end it when it expires (unless renewed, released or replaced first)."""
        heapq.heappush(self._heap, (lease.expires_at, next(self._seq), lease.run_id, lease.lease_id))
        self._arm()

    def _arm(self, *, force: bool = False) -> None:
        if self._loop is None or not self._heap:
            return
        due = self._heap[0][0]
        if not force and self._armed_at is not None and self._armed_at <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, due - self.leases.monotonic()) + EXPIRY_SLACK_S
        self._armed_at = due
        self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = self._armed_at = None
        now = self.leases.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, run_id, lease_id = heapq.heappop(self._heap)
            lease = self.leases.live_lease(run_id)
            if lease is None or lease.lease_id != lease_id:
                continue  # released or replaced: nothing to end
            if now < lease.expires_at:  # renewed since: come back at the new expiry
                heapq.heappush(self._heap, (lease.expires_at, next(self._seq), run_id, lease_id))
                continue
            try:
                self.leases.expire_if_due(run_id)
            except Exception:  # the sweeper retries; the clock must keep running
                log.exception("could not end the expired lease of run %s", run_id)
        self._arm()


class Wakeups:
    """The parked acquires and the expiry clock of one lease manager (``LeaseManager.watch``)."""

    def __init__(self, leases: LeaseManager) -> None:
        self.leases = leases
        self.waiters = Waiters()
        self.clock = ExpiryClock(leases)
        self.closing = False

    # -- what the lease manager and run control report -------------------------------------------

    def lease_started(self, lease: LiveLease) -> None:
        self.clock.watch(lease)

    def leases_reloaded(self, leases: list[LiveLease]) -> None:
        self.clock.reset(leases)

    def run_changed(self, row: RunRow) -> None:
        """A run was released, expired, submitted or cancelled: wake who may now get it, or be told no."""
        self.waiters.wake_run(row.run_id)
        if row.status in runs.WAITING_STATUSES and not row.lease_id:
            self.waiters.wake_pool(row.mode)

    # -- the long poll ----------------------------------------------------------------------------

    async def acquire(self, req: AcquireRequest, connected: Callable[[], bool]) -> tuple[Grant, float]:
        """The grant (and how long it was waited for), or the last refusal raised once ``req.wait_s``
        ran out, the commander is shutting down, or the caller is gone."""
        monotonic = self.leases.monotonic
        started = monotonic()
        deadline = started + (req.wait_s or 0.0)
        while True:
            try:
                return self.leases.acquire(req), monotonic() - started
            except WAITABLE as exc:
                remaining = deadline - monotonic()
                if remaining <= 0 or self.closing or not connected():
                    raise
                refusal = exc.with_traceback(None)  # kept for the answer; its frames are not
            await self.waiters.wait(req.run_id, req.mode, _park_s(refusal, remaining))
            if (
                not connected()
            ):  # nobody to hand a grant to: never grant, answer the refusal (it goes nowhere)
                raise refusal

    def close(self) -> None:
        """Shutting down: parked acquires answer now, and no new one parks."""
        self.closing = True
        self.waiters.wake_all()
        self.clock.stop()
