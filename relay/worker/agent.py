"""The worker agent: acquire a run's lease, hand it to a :class:`~relay.worker.session.RunSession`, repeat.

One agent per pod.  With ``run_id`` set it carries that run once; without it (pool mode) it asks for
the next waiting run after each one ends, until none is left (``idle_exit_s``), a signal arrives, or
a run is preempted.  Acquiring retries with jittered backoff while another worker holds the lease.
The states it walks and the exit codes it ends with are in :mod:`relay.worker.lifecycle`; what
happens to one run under one lease is :mod:`relay.worker.session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from typing import TYPE_CHECKING

from relay.config import ConfigError, WorkerConfig
from relay.ids import InvalidIdError
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
    Outcome,
    State,
)
from relay.worker.session import RunSession

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


class Agent:
    """Carries runs for one pod until there is nothing left to do; ``await run()`` returns the exit code."""

    def __init__(self, cfg: WorkerConfig, *, client: CommanderClient | None = None) -> None:
        self.cfg = cfg
        self._client = client
        self.state = S.IDLE
        self.history: list[tuple[float, State]] = [(time.time(), S.IDLE)]
        self.stop_requested: asyncio.Event | None = None
        self.force_requested: asyncio.Event | None = None
        self.signal_name: str | None = None
        self.stop_at: float | None = None  # monotonic time of the first SIGTERM/SIGINT
        self.session: RunSession | None = None

    def goto(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"worker state cannot go from {self.state.value} to {new.value}")
        log.debug("state %s -> %s", self.state.value, new.value)
        self.state = new
        self.history.append((time.time(), new))

    # -- signals --------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        assert self.stop_requested is not None and self.force_requested is not None
        name = signal.Signals(signum).name
        if not self.stop_requested.is_set():
            self.signal_name = name
            self.stop_at = time.monotonic()
            log.warning(
                "%s: stopping the trainer gracefully (up to %gs), then handing the run on",
                name,
                self.cfg.grace_s,
            )
            self.stop_requested.set()
        else:
            log.warning("%s again: killing the trainer now and releasing without waiting", name)
            self.force_requested.set()

    def _install_signals(self) -> list[int]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
                pass
        return installed

    # -- main loop ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.stop_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        installed = self._install_signals()
        try:
            if self._client is not None:
                return await self._run(self._client)
            from relay.client import CommanderClient

            async with CommanderClient(self.cfg.commander_url, self.cfg.secret()) as client:
                return await self._run(client)
        finally:
            loop = asyncio.get_running_loop()
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _run(self, client: CommanderClient) -> int:
        pool = self.cfg.run_id is None
        self.goto(S.ACQUIRING)
        while True:
            got = await self._acquire(client)
            if isinstance(got, int):
                self.goto(S.DONE)
                return got
            grant, sent_at = got
            try:
                session = RunSession(self, client, grant, sent_at)
            except InvalidIdError as exc:  # a run id no commander may grant: touch nothing on the volume
                print(f"relay worker: the commander granted an unusable run id: {exc}", file=sys.stderr)
                self.goto(S.DONE)
                return EXIT_COMMANDER
            except ConfigError as exc:  # the run's spec does not make a valid configuration
                outcome = await _release_unusable(self, client, grant, str(exc))
                if not pool:
                    return outcome
                continue
            self.session = session
            outcome = await session.run()
            self.session = None
            if outcome.exit_code == EXIT_FENCED or outcome.release is None:
                self.goto(S.DONE)
                return outcome.exit_code
            if not pool or self.stop_requested.is_set() or outcome.release == "preempted":
                self.goto(S.DONE)
                return outcome.exit_code
            log.info("run %s ended (%s); asking for the next waiting run", grant.run_id, outcome.release)
            self.goto(S.ACQUIRING)

    async def _acquire(self, client: CommanderClient) -> tuple[AcquireGranted, float] | int:
        """A grant (and the monotonic time its request was sent), or the exit code to end with."""
        from relay.client import (
            BadRequest,
            CommanderError,
            CommanderUnreachable,
            LeaseHeld,
            NotFound,
            NoWaitingRun,
            RunClosed,
            Unauthorized,
        )
        from relay.schema import AcquireRequest

        assert self.stop_requested is not None
        cfg = self.cfg
        req = AcquireRequest(run_id=cfg.run_id, worker_id=cfg.worker_id, mode=cfg.mode)
        attempt = 0
        unreachable_since: float | None = None
        idle_since: float | None = None
        what = f"run {cfg.run_id}" if cfg.run_id else f"the next waiting {cfg.mode} run"
        while True:
            if self.stop_requested.is_set():
                print(f"relay worker: {self.signal_name} before a run was acquired; exiting", file=sys.stderr)
                return EXIT_OK
            sent = time.monotonic()
            hint: float | None = None
            try:
                grant = await client.acquire(req)
            except LeaseHeld as exc:
                unreachable_since = None
                hint = exc.retry_after_s
                log.info("%s is held by %s; retrying", what, exc.holder)
            except RunClosed as exc:
                print(f"relay worker: {exc}; nothing to do", file=sys.stderr)
                return EXIT_OK
            except NoWaitingRun:
                unreachable_since = None
                now = time.monotonic()
                idle_since = idle_since if idle_since is not None else now
                if cfg.idle_exit_s == 0 or (cfg.idle_exit_s > 0 and now - idle_since >= cfg.idle_exit_s):
                    print("relay worker: no run is waiting for a worker; exiting", file=sys.stderr)
                    return EXIT_OK
                log.info("no waiting run; polling")
            except Unauthorized as exc:
                print(f"relay worker: {exc}", file=sys.stderr)
                return EXIT_COMMANDER
            except (BadRequest, NotFound) as exc:
                print(f"relay worker: the commander refused the acquire: {exc}", file=sys.stderr)
                return EXIT_CONFIG
            except CommanderUnreachable as exc:
                now = time.monotonic()
                unreachable_since = unreachable_since if unreachable_since is not None else now
                if now - unreachable_since >= cfg.commander_wait_s:
                    print(
                        f"relay worker: {exc} (gave up after {cfg.commander_wait_s:g}s, commander_wait_s)",
                        file=sys.stderr,
                    )
                    return EXIT_COMMANDER
                log.warning("%s; retrying", exc)
            except CommanderError as exc:
                print(f"relay worker: acquire failed: {exc}", file=sys.stderr)
                return EXIT_COMMANDER
            else:
                return grant, sent
            delay = min(cfg.acquire_backoff_max_s, cfg.acquire_backoff_s * (2**attempt))
            if hint is not None and hint > 0:
                delay = min(delay, hint)
            delay *= random.uniform(0.5, 1.0)
            attempt = min(attempt + 1, 30)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), timeout=delay)


async def _release_unusable(agent: Agent, client: CommanderClient, grant: AcquireGranted, why: str) -> int:
    """A grant we cannot act on (its spec is invalid): hand it back as failed, say why."""
    from relay.schema import ReleaseRequest

    print(f"relay worker: run {grant.run_id}: {why}", file=sys.stderr)
    with contextlib.suppress(Exception):
        await client.release(
            ReleaseRequest(
                run_id=grant.run_id,
                worker_id=agent.cfg.worker_id,
                lease_id=grant.lease_id,
                epoch=grant.epoch,
                outcome="failed",
                detail=why[:8000],
            )
        )
    return EXIT_CONFIG
