"""The worker agent: acquire a run's lease, hand it to a :class:`~relay.worker.session.RunSession`, repeat.

One agent per pod.  With ``run_id`` set it carries that run once; without it (pool mode) it asks for
the next waiting run after each one ends, until none is left (``idle_exit_s``), a signal arrives, or
a run is preempted.  While another worker holds the lease (or nothing waits), each acquire is a long
poll (``acquire_wait_s``): the commander answers the moment the run can be granted, so a waiting pod
picks a run up at once, without polling; time the commander held a poll counts as waiting, and the
jittered backoff only spaces out quick refusals (and every try against a commander without long
polls).  A SIGTERM ends a wait at once.  While it waits for a named run, the pod is a warm standby
(:mod:`relay.worker.standby`).
The states it walks and the exit codes it ends with are in :mod:`relay.worker.lifecycle`; what
happens to one run under one lease is :mod:`relay.worker.session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from relay.backoff import Backoff
from relay.config import ConfigError, WorkerConfig
from relay.ids import InvalidIdError
from relay.schema import CLOSED_STATUSES, ReleaseOutcome
from relay.worker.held_lease import HeldLeases
from relay.worker.lease import Lease
from relay.worker.lifecycle import (
    EXIT_CODES,
    EXIT_COMMANDER,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_FENCED,
    EXIT_INTERNAL,
    EXIT_OK,
    TRANSITIONS,
    IllegalTransition,
    Lifecycle,
    Outcome,
    State,
)
from relay.worker.session import RunSession
from relay.worker.signals import StopSignals
from relay.worker.standby import Standby, standby_remote
from relay.worker.volume import VolumeError

if TYPE_CHECKING:
    from relay.client import CommanderClient
    from relay.schema import AcquireGranted

# the worker's public face: the agent, and the lifecycle vocabulary it speaks (defined in lifecycle)
__all__ = [
    "EXIT_CODES",
    "EXIT_COMMANDER",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_FENCED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "TRANSITIONS",
    "Agent",
    "IllegalTransition",
    "Outcome",
    "State",
]

log = logging.getLogger("relay.worker")
S = State
T = TypeVar("T")

#: an idle pool worker says it still waits at most this often (the first "no waiting run" is said at once)
IDLE_NOTE_EVERY_S = 300.0


class Agent:
    """Carries runs for one pod until there is nothing left to do; ``await run()`` returns the exit code."""

    def __init__(self, cfg: WorkerConfig, *, client: CommanderClient | None = None) -> None:
        self.cfg = cfg
        self._client = client
        self.lifecycle = Lifecycle()
        self.signals: StopSignals | None = None
        self.acquire_backoff = Backoff(cfg.acquire_backoff_s, cfg.acquire_backoff_max_s)
        self.long_poll = cfg.acquire_wait_s > 0  # off for good once the commander says it has none
        self.standby: Standby | None = None  # while waiting for a named run held by another pod
        self._standby_tried = False
        #: run -> the remote epoch this worker reported when its claim found the remote ahead
        self.remote_epochs: dict[str, int] = {}

    @property
    def state(self) -> State:
        return self.lifecycle.state

    def goto(self, new: State) -> None:
        self.lifecycle.goto(new)

    # -- main loop ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.signals = StopSignals(self.cfg.grace_s)
        self.signals.install()
        try:
            if self._client is not None:
                return await self._run(self._client)
            from relay.client import CommanderClient

            async with CommanderClient(
                self.cfg.commander_url, self.cfg.secret(), secret_hint=SECRET_HINT
            ) as client:
                return await self._run(client)
        finally:
            self.signals.uninstall()

    async def _run(self, client: CommanderClient) -> int:
        held = HeldLeases(self.cfg.relay_root, self.cfg.worker_id)
        try:
            return await self._carry(client, held)
        finally:
            held.close()

    async def _carry(self, client: CommanderClient, held: HeldLeases) -> int:
        pool = self.cfg.run_id is None
        self.goto(S.ACQUIRING)
        resume = held.find() if pool else None  # pool mode: the run this worker id held before a restart
        while True:
            got = await self._acquire(client, held, resume)
            resume = None
            standby, self.standby = self.standby, None  # the session stops it before it recovers
            if isinstance(got, int):
                await _stop(standby)
                self.goto(S.DONE)
                return got
            code = await self._carry_one(client, held, *got, standby)
            if code is not None:
                return code

    async def _carry_one(
        self,
        client: CommanderClient,
        held: HeldLeases,
        grant: AcquireGranted,
        sent_at: float,
        standby: Standby | None,
    ) -> int | None:
        """Train one granted run to its end; the exit code to end the worker with, or None to ask for the
        next run (pool mode, or a grant that must jump past the run's remote epoch)."""
        assert self.signals is not None
        pool = self.cfg.run_id is None
        reported = self.remote_epochs.get(grant.run_id)
        if reported is not None and grant.epoch <= reported:  # told, and it did not jump: no loop
            code = await _release_unusable(
                self.cfg, client, grant, remote_not_passed(grant.epoch, reported), restartable=False
            )
            return None if pool else code
        try:
            lease = Lease.from_grant(grant, worker_id=self.cfg.worker_id, sent_at=sent_at)
            session = RunSession(
                self.cfg, client, lease, signals=self.signals, lifecycle=self.lifecycle, standby=standby
            )
        except InvalidIdError as exc:  # a run id no commander may grant: touch nothing on the volume
            await _stop(standby)
            print(f"relay worker: the commander granted an unusable run id: {exc}", file=sys.stderr)
            self.goto(S.DONE)
            return EXIT_COMMANDER
        except ConfigError as exc:  # the run's spec does not make a valid configuration
            await _stop(standby)
            code = await _release_unusable(self.cfg, client, grant, str(exc))
            return None if pool else code
        except VolumeError as exc:  # the pod's volume failed since the preflight: not the run's fault
            self.goto(S.DONE)
            return await _release_unusable(
                self.cfg, client, grant, str(exc), outcome=ReleaseOutcome.preempted
            )
        held.keep(lease)  # so a restart of this worker process can show it and carry on at once
        self.signals.holding_run = True
        try:
            outcome = await session.run()
        finally:
            self.signals.holding_run = False
            held.drop(lease.run_id)
        return self._after(grant, outcome)

    def _after(self, grant: AcquireGranted, outcome: Outcome) -> int | None:
        """Where a carried run's end leaves the worker: done (its exit code), or asking again (None)."""
        assert self.signals is not None
        if outcome.exit_code == EXIT_FENCED or outcome.release is None:
            self.goto(S.DONE)
            return outcome.exit_code
        if outcome.remote_epoch is not None and not self.signals.stopping:
            self.remote_epochs[grant.run_id] = outcome.remote_epoch  # the next grant must be above it
            self.goto(S.ACQUIRING)
            return None
        pool = self.cfg.run_id is None
        if not pool or self.signals.stopping or outcome.release is ReleaseOutcome.preempted:
            self.goto(S.DONE)
            return outcome.exit_code
        log.info("run %s ended (%s); asking for the next waiting run", grant.run_id, outcome.release.value)
        self.goto(S.ACQUIRING)
        return None

    async def _acquire(
        self, client: CommanderClient, held: HeldLeases, resume: str | None = None
    ) -> tuple[AcquireGranted, float] | int:
        """A grant (and the earliest monotonic time it can have been made at: the request's send time
        plus what the commander says it held the request), or the exit code to end with.

        The request shows the lease this worker id held on the run, when its volume has one
        (``relay.worker.held_lease``); in pool mode ``resume`` names such a run, asked for first."""
        from relay.client import CommanderError, CommanderUnreachable, LeaseHeld
        from relay.schema import AcquireRequest

        signals = self.signals
        assert signals is not None
        cfg = self.cfg
        run_id = cfg.run_id or resume
        proof = held.claim(run_id) if run_id is not None else None
        refusals = _Refusals(cfg, self.acquire_backoff)
        while True:
            if signals.stopping:
                print(f"relay worker: {signals.name} before a run was acquired; exiting", file=sys.stderr)
                return EXIT_OK
            wait_s = self._wait_s(refusals) if self.long_poll else None
            req = AcquireRequest(
                run_id=run_id, worker_id=cfg.worker_id, mode=cfg.mode, held_lease=proof, wait_s=wait_s
            )
            sent = time.monotonic()
            try:
                grant = await _unless_stopped(client.acquire(req), signals.stop_requested)
            except CommanderError as exc:
                if wait_s and _no_long_poll(exc):
                    log.info("the commander has no long poll (an older version): polling with backoff")
                    self.long_poll = False
                    continue
                if resume is not None and not isinstance(exc, CommanderUnreachable):
                    log.info(
                        "run %s is no longer this worker's (%s); asking for the next waiting run", resume, exc
                    )
                    held.drop(resume)
                    resume = run_id = proof = None
                    continue
                verdict = refusals.after(exc, sent=sent)
                if not isinstance(verdict, int) and wait_s is None and self.long_poll and _waitable(exc):
                    verdict = 0.0  # the first, quick try said who holds it: the long poll that follows waits
                if isinstance(exc, LeaseHeld):
                    await self._start_standby(client)
            else:
                if grant is None:
                    continue  # stopped while waiting: the top of the loop says so and exits
                return grant, sent + max(0.0, grant.waited_s)
            if isinstance(verdict, int):
                return verdict
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(signals.stop_requested.wait(), timeout=verdict)

    def _wait_s(self, refusals: _Refusals) -> float | None:
        """How long to ask the commander to hold this acquire: nothing the first time (the answer says
        who holds the run, and starts the standby at once), then ``acquire_wait_s``, except in pool mode,
        where a worker that exits when idle must not wait past its ``idle_exit_s``."""
        cfg = self.cfg
        if refusals.attempt == 0:
            return None
        if cfg.run_id is not None or cfg.idle_exit_s < 0:
            return cfg.acquire_wait_s
        left = cfg.idle_exit_s - refusals.idle.idle_s()
        return min(cfg.acquire_wait_s, left) if left > 0 else None

    async def _start_standby(self, client: CommanderClient) -> None:
        """Become a warm standby for the named run another pod holds (once; see ``standby``)."""
        cfg = self.cfg
        if self._standby_tried or not cfg.standby or cfg.run_id is None:
            return
        self._standby_tried = True
        url = await standby_remote(cfg, client)
        if url is None:
            log.info("no remote to follow: no warm standby for run %s", cfg.run_id)
            return
        self.standby = Standby(cfg, cfg.run_id, url)
        self.standby.start()


class _Refusals:
    """What an acquire that did not grant means: wait this long and ask again (a float), or end the worker
    with this exit code (an int).  Holds the backoff count, the idle time and the unreachable time."""

    def __init__(self, cfg: WorkerConfig, backoff: Backoff) -> None:
        self.cfg = cfg
        self.backoff = backoff
        self.attempt = 0
        self.unreachable_since: float | None = None
        self.idle = _IdleNotes()
        self.said_same_id = False
        self.what = f"run {cfg.run_id}" if cfg.run_id else f"the next waiting {cfg.mode} run"

    def after(self, exc: Exception, *, sent: float) -> float | int:
        """The verdict on the refusal of the acquire sent at monotonic time ``sent``."""
        from relay.client import (
            BadRequest,
            CommanderUnreachable,
            LeaseHeld,
            NotFound,
            NoWaitingRun,
            RunClosed,
            Unauthorized,
        )

        cfg = self.cfg
        hint: float | None = None
        if isinstance(exc, CommanderUnreachable):
            now = time.monotonic()
            self.unreachable_since = self.unreachable_since if self.unreachable_since is not None else now
            if now - self.unreachable_since >= cfg.commander_wait_s:
                return _say(
                    f"{exc} (gave up after {cfg.commander_wait_s:g}s, commander_wait_s)", EXIT_COMMANDER
                )
            log.warning("%s; retrying", exc)
            return self._next(None, held_s=time.monotonic() - sent)
        self.unreachable_since = None
        if isinstance(exc, LeaseHeld):
            hint = exc.retry_after_s
            if exc.holder == cfg.worker_id and not self.said_same_id:  # a copied WORKER_ID, said once
                self.said_same_id = True
                log.warning("%s; waiting for that lease to end", exc)
            log.info("%s is held by %s; retrying", self.what, exc.holder)
        elif isinstance(exc, RunClosed):  # completed/cancelled: nothing to do; failed: it cannot be granted
            return _say(f"{exc}; nothing to do", EXIT_OK if exc.status in CLOSED_STATUSES else EXIT_FAILED)
        elif isinstance(exc, NoWaitingRun):
            idle_s = self.idle.waiting(since=sent)
            if cfg.idle_exit_s == 0 or (cfg.idle_exit_s > 0 and idle_s >= cfg.idle_exit_s):
                return _say("no run is waiting for a worker; exiting", EXIT_OK)
        elif isinstance(exc, Unauthorized):
            return _say(str(exc), EXIT_COMMANDER)
        elif isinstance(exc, (BadRequest, NotFound)):
            return _say(f"the commander refused the acquire: {exc}", EXIT_CONFIG)
        else:
            return _say(f"acquire failed: {exc}", EXIT_COMMANDER)
        return self._next(hint, held_s=time.monotonic() - sent)

    def _next(self, hint: float | None, held_s: float = 0.0) -> float:
        """The backoff delay, less the time the commander held the request (a long poll is waiting too)."""
        delay = self.backoff.delay(self.attempt, at_most_s=hint if hint and hint > 0 else None)
        self.attempt += 1
        return max(0.0, delay - held_s)


async def _unless_stopped(call: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``await call``, or None as soon as ``stop`` is set (the call is cancelled: a SIGTERM ends a long
    poll at once).  A call that finished first wins, even a grant: the session then hands it back."""
    task = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _waitable(exc: Exception) -> bool:
    """A refusal a long poll waits out: the run is held, or nothing waits."""
    from relay.client import LeaseHeld, NoWaitingRun

    return isinstance(exc, (LeaseHeld, NoWaitingRun))


def _no_long_poll(exc: Exception) -> bool:
    """Whether the commander refused ``wait_s`` itself: an older commander names it as an unknown field."""
    from relay.client import BadRequest

    return isinstance(exc, BadRequest) and exc.field == "wait_s"


async def _stop(standby: Standby | None) -> None:
    if standby is not None:
        await standby.stop()


def _say(message: str, code: int) -> int:
    print(f"relay worker: {message}", file=sys.stderr)
    return code


#: what a worker tells its operator to do about a 401 (the worker has no --secret flag: env or config)
SECRET_HINT = (
    "set RELAY_SHARED_SECRET (or relay_shared_secret in the worker's config file) to the commander's secret"
)


class _IdleNotes:
    """An idle pool worker says so once, then only every ``IDLE_NOTE_EVERY_S`` (not on every poll)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self._said_at: float | None = None

    def idle_s(self) -> float:
        """How long the worker has been idle (0 before the first empty answer)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def waiting(self, since: float) -> float:
        """Record one more empty answer, to a request sent at ``since``; return how long the worker
        has been idle (from the send time of the first empty answer's request)."""
        now = time.monotonic()
        if self.since is None:
            self.since = since
            self._said_at = now
            log.info("no waiting run; waiting for one to be submitted")
        elif self._said_at is not None and now - self._said_at >= IDLE_NOTE_EVERY_S:
            self._said_at = now
            log.info("still no waiting run (idle for %.0fs)", now - self.since)
        return now - self.since


async def _release_unusable(
    cfg: WorkerConfig,
    client: CommanderClient,
    grant: AcquireGranted,
    why: str,
    *,
    restartable: bool = True,
    outcome: ReleaseOutcome = ReleaseOutcome.failed,
) -> int:
    """A grant we cannot act on (its spec is invalid, its epoch below the remote's, this pod's volume
    failed): hand it back with ``outcome``, say why."""
    print(f"relay worker: run {grant.run_id}: {why}", file=sys.stderr)
    lease = Lease.from_grant(grant, worker_id=cfg.worker_id, sent_at=time.monotonic())
    with contextlib.suppress(Exception):
        await client.release(lease.release_request(outcome.value, why, restartable=restartable))
    return EXIT_CONFIG if restartable else EXIT_FAILED


def remote_not_passed(epoch: int, remote_epoch: int) -> str:
    """Why a worker ends a run whose commander keeps granting epochs the run's remote has seen."""
    return (
        f"the commander granted epoch {epoch} after this worker reported the run's remote at epoch "
        f"{remote_epoch}: grants do not jump past the remote's epoch, so every grant would be refused by "
        "storage; failing the run instead of looping (check the remote's relay/state.json, and that the "
        "commander honours ReleaseRequest.remote_epoch)"
    )
