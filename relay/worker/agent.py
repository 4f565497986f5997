"""The worker's lifecycle for one pod: acquire -> recover -> launch -> supervise -> release.

Like torch.distributed.elastic's agent, the lifecycle is an explicit state machine: :class:`State`
names every phase and :data:`TRANSITIONS` is the one table of allowed moves (``Agent._goto``
refuses any other, and the tests walk the table)::

    IDLE ──▶ ACQUIRING ──▶ RECOVERING ──▶ LAUNCHING ──▶ SUPERVISING ──▶ FINALIZING ──▶ RELEASING ──▶ DONE
                 │  ▲           │              ▲    │        │   │  ▲                      ▲      │
                 │  └───────────┼──────────────┼────┼────────┼───┼──┼──── (pool mode: next run)
                 ▼              │              │    │        │   ▼  │
                DONE            │         RESTARTING ◀───────┘  STOPPING
                                ▼  (any phase holding the lease)
                              FENCED ──▶ DONE

- ACQUIRING: ask for the lease; retry with jittered backoff while another worker holds it; a
  closed run or (pool mode) no waiting run ends the worker with exit 0.
- RECOVERING: commit checkpoints a dead predecessor left staged, then take the newest verified
  checkpoint: the local volume, unless the remote holds a strictly newer one (pulled, verified);
  none: cold start.
- LAUNCHING: write the ``train:`` block, spawn ``launch_<mode>.sh`` (own process group, pdeathsig).
- SUPERVISING: poll progress, commit finished checkpoints (in a thread) and hand them to the
  syncer, run the watchdog; renewal and reports run as their own tasks meanwhile.
- RESTARTING: the trainer crashed or hung; back off, then launch again from the newest checkpoint,
  or give up after ``max_restarts`` (release ``failed``).
- STOPPING: SIGTERM/SIGINT, a cancel, or ``max_runtime_s``: SIGTERM the trainer's group and wait up
  to ``grace_s`` for it to save and exit.
- FINALIZING: commit the final checkpoint and wait for its upload (bounded by the remaining grace
  when preempted).
- RELEASING: flush reports, stop renewing, release with the outcome.
- FENCED: the lease is lost (409, renewals failing for ttl - margin, or the remote refusing our
  epoch). The trainer was already killed by the fence; commit and sync nothing more; exit 3.

Slow work (listing and committing checkpoints, hashing, pulls) runs in daemon threads and uploads
in the syncer, so neither the renewal task nor the supervisor loop ever waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from relay.config import ConfigError, WorkerConfig, validate_config
from relay.ids import InvalidIdError
from relay.worker.events import EventLog
from relay.worker.launcher import TrainerLog, TrainerProcess, trainer_argv
from relay.worker.lease_keeper import Fence, LeaseKeeper
from relay.worker.progress import ProgressTail
from relay.worker.reporter import Reporter
from relay.worker.watchdog import ExitReport, RestartPolicy, Verdict, Watchdog, classify_exit

log = logging.getLogger("relay.worker")
T = TypeVar("T")

# ------------------------------------------------------------------------------------ exit codes

EXIT_OK = 0  # completed, preempted and handed on, cancelled, or nothing to do (closed run, no work)
EXIT_INTERNAL = 1  # a bug: unexpected exception (traceback in the log)
EXIT_CONFIG = 2  # bad configuration (or a run spec / mode the commander refuses): nothing acquired
EXIT_FENCED = 3  # lost the lease: trainer killed, nothing more committed or synced
EXIT_FAILED = (
    4  # the run failed here: crash loop, hang loop, max_runtime_s, launcher missing, recovery failed
)
EXIT_COMMANDER = 5  # the commander was unreachable for commander_wait_s, or refused our secret

EXIT_CODES = {
    EXIT_OK: "done: completed, preempted and handed on, cancelled, or nothing to do",
    EXIT_INTERNAL: "internal error (see the traceback in the log)",
    EXIT_CONFIG: "configuration error; nothing was acquired",
    EXIT_FENCED: "fenced: the lease was lost, the trainer was killed",
    EXIT_FAILED: "the run failed on this worker and was released as failed",
    EXIT_COMMANDER: "the commander was unreachable or refused the shared secret",
}

TICK_S = 0.25  # supervisor poll period: progress, staged checkpoints, watchdog
STOP_TICK_S = 0.05  # while waiting for a final checkpoint, poll faster: it is on the handoff's path


class State(str, enum.Enum):
    IDLE = "idle"
    ACQUIRING = "acquiring"
    RECOVERING = "recovering"
    LAUNCHING = "launching"
    SUPERVISING = "supervising"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    FINALIZING = "finalizing"
    RELEASING = "releasing"
    FENCED = "fenced"
    DONE = "done"


S = State
_HOLDING = (S.RECOVERING, S.LAUNCHING, S.SUPERVISING, S.RESTARTING, S.STOPPING, S.FINALIZING, S.RELEASING)

#: from -> allowed next states.  Every phase that holds the lease may be fenced.
TRANSITIONS: dict[State, frozenset[State]] = {
    S.IDLE: frozenset({S.ACQUIRING, S.DONE}),
    S.ACQUIRING: frozenset({S.RECOVERING, S.DONE}),
    # a signal or cancel during recovery releases at once; a failed recovery releases too
    S.RECOVERING: frozenset({S.LAUNCHING, S.RELEASING, S.FENCED}),
    # a missing launcher releases as failed
    S.LAUNCHING: frozenset({S.SUPERVISING, S.RELEASING, S.FENCED}),
    S.SUPERVISING: frozenset({S.RESTARTING, S.STOPPING, S.FINALIZING, S.FENCED}),
    # give up -> FINALIZING (commit what exists, release failed); signal/cancel in backoff -> FINALIZING
    S.RESTARTING: frozenset({S.LAUNCHING, S.FINALIZING, S.FENCED}),
    S.STOPPING: frozenset({S.FINALIZING, S.FENCED}),
    S.FINALIZING: frozenset({S.RELEASING, S.FENCED}),
    # pool mode goes on with the next waiting run
    S.RELEASING: frozenset({S.DONE, S.ACQUIRING, S.FENCED}),
    S.FENCED: frozenset({S.DONE}),
    S.DONE: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass
class Outcome:
    """How carrying one run ended: the release outcome (None: nothing released) and the exit code."""

    release: str | None
    exit_code: int
    detail: str
    step: int | None = None


# ----------------------------------------------------------------------------------- thread helper


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a fresh daemon thread and await its result.

    Not ``asyncio.to_thread``: the default executor's threads are joined at interpreter exit, so a
    fenced worker would hang on a hash or a download it no longer wants.  A daemon thread is simply
    abandoned when the worker exits.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def _set(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _runner() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set, None, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set, result, None)

    threading.Thread(target=_runner, name=f"relay-{getattr(fn, '__name__', 'work')}", daemon=True).start()
    return await fut


def _tail_text(lines: list[str], limit: int = 3000) -> str:
    text = "\n".join(lines)
    return text[-limit:]


# ------------------------------------------------------------------------------------------ agent


class Agent:
    """Carries runs for one pod until there is nothing left to do; ``await run()`` returns the exit code."""

    def __init__(self, cfg: WorkerConfig, *, client: Any = None) -> None:
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

    async def _run(self, client: Any) -> int:
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

    async def _acquire(self, client: Any) -> tuple[Any, float] | int:
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


async def _release_unusable(agent: Agent, client: Any, grant: Any, why: str) -> int:
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


def effective_config(cfg: WorkerConfig, spec: Any) -> WorkerConfig:
    """The pod's config with a submitted run's spec applied: the spec decides what is trained."""
    if spec is None:
        return cfg
    data = cfg.model_dump()
    data.update(mode=spec.mode, train=dict(spec.train), max_restarts=spec.max_restarts)
    if spec.remote:
        data.update(remote=spec.remote, hf_repo=None)
    if spec.max_duration_s is not None:
        data["max_runtime_s"] = spec.max_duration_s
    try:
        return validate_config(data, {key: "run spec" for key in ("mode", "train", "remote", "max_restarts")})
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.message, "run spec") from None


# ------------------------------------------------------------------------------------- one run


class _Stop(Exception):
    """Raised inside a session when the lease must be given up now (fence, or a stop before training)."""


class RunSession:
    """Everything about carrying one granted run under one epoch."""

    def __init__(self, agent: Agent, client: Any, grant: Any, sent_at: float) -> None:
        from relay.ckpt.layout import RunLayout

        self.agent = agent
        self.client = client
        self.grant = grant
        self.cfg = effective_config(agent.cfg, getattr(grant, "spec", None))
        self.run_id: str = grant.run_id
        self.epoch: int = grant.epoch
        self.lease_id: str = grant.lease_id
        self.sent_at = sent_at
        self.layout = RunLayout(self.cfg.relay_root, self.run_id)
        self.layout.ensure()
        self.loop = asyncio.get_running_loop()
        self.fence = Fence(self.loop)
        self.events = EventLog(
            self.layout.events_file, run_id=self.run_id, worker_id=self.cfg.worker_id, epoch=self.epoch
        )
        self.tlog = TrainerLog(
            self.layout.logs_dir, max_bytes=self.cfg.log_max_bytes, backups=self.cfg.log_backups
        )
        self.keeper = LeaseKeeper(
            client,
            run_id=self.run_id,
            worker_id=self.cfg.worker_id,
            lease_id=self.lease_id,
            epoch=self.epoch,
            ttl_s=float(grant.ttl_s),
            renew_interval_s=float(grant.renew_interval_s),
            safety_margin_s=self.cfg.renew_safety_margin_s,
            fence=self.fence,
            granted_sent_at=sent_at,
        )
        self.reporter = Reporter(
            client,
            run_id=self.run_id,
            worker_id=self.cfg.worker_id,
            lease_id=self.lease_id,
            epoch=self.epoch,
            events=self.events,
            trainer_log=self.tlog,
            fence=self.fence,
            interval_s=self.cfg.report_interval_s,
        )
        self.remote: Any = None
        self.syncer: Any = None
        self.trainer: TrainerProcess | None = None
        self.latest: Any = None  # newest CommittedCheckpoint on the volume
        self.step = 0
        self._commit_task: asyncio.Task[None] | None = None
        self._file_log: logging.Handler | None = None
        self._fence_task: asyncio.Task[str] | None = None

    # -- helpers --------------------------------------------------------------------------------

    @property
    def stop_requested(self) -> asyncio.Event:
        assert self.agent.stop_requested is not None
        return self.agent.stop_requested

    @property
    def force_requested(self) -> asyncio.Event:
        assert self.agent.force_requested is not None
        return self.agent.force_requested

    def goto(self, state: State) -> None:
        self.agent.goto(state)

    def _check_fence(self) -> None:
        if self.fence.tripped:
            raise _Stop("fenced")

    async def _guarded(self, coro: Any, *, stop_on_signal: bool = True) -> Any:
        """Await ``coro`` unless the fence trips (or, with ``stop_on_signal``, a stop/cancel arrives) first."""
        task = asyncio.ensure_future(coro)
        waits = {task, self._fence_waiter()}
        if stop_on_signal:
            waits |= {
                asyncio.ensure_future(self.stop_requested.wait()),
                asyncio.ensure_future(self.keeper.cancel_requested.wait()),
            }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if w is not task and w is not self._fence_task:
                    w.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise _Stop("fenced" if self.fence.tripped else "interrupted")

    def _fence_waiter(self) -> asyncio.Task[str]:
        if self._fence_task is None:
            self._fence_task = asyncio.ensure_future(self.fence.wait())
        return self._fence_task

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> Outcome:
        self._file_log = logging.FileHandler(self.layout.logs_dir / "worker.log")
        self._file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("relay").addHandler(self._file_log)
        self.keeper.start()
        self.reporter.start()
        try:
            return await self._run()
        except _Stop:
            if self.fence.tripped:
                return await self._fenced()
            raise
        finally:
            await self._cleanup()

    async def _run(self) -> Outcome:
        cfg = self.cfg
        self.goto(S.RECOVERING)
        self.fence.set_hook("syncer", self._stop_syncer_now)
        self.events.emit(
            "acquired",
            lease_id=self.lease_id,
            ttl_s=self.grant.ttl_s,
            renew_interval_s=self.grant.renew_interval_s,
            margin_s=self.keeper.margin_s,
            mode=cfg.mode,
            spec=bool(getattr(self.grant, "spec", None)),
        )
        log.info(
            "acquired run %s at epoch %d (ttl %gs, renew every %gs)",
            self.run_id,
            self.epoch,
            self.grant.ttl_s,
            self.grant.renew_interval_s,
        )
        try:
            resume = await self._guarded(self._recover())
        except _Stop:
            if self.fence.tripped:
                raise
            return await self._interrupted_before_training()
        except Exception as exc:
            detail = f"recovery failed: {type(exc).__name__}: {exc}"
            log.error("%s", detail)
            self.goto(S.RELEASING)
            if getattr(exc, "retryable", False):  # a transient remote problem: let another pod try
                return await self._release("preempted", EXIT_FAILED, detail)
            return await self._release("failed", EXIT_FAILED, detail)
        return await self._train(resume)

    async def _interrupted_before_training(self) -> Outcome:
        self.goto(S.RELEASING)
        if self.keeper.cancel_requested.is_set():
            return await self._release("cancelled", EXIT_OK, "cancelled before training started")
        return await self._release("preempted", EXIT_OK, f"{self.agent.signal_name} before training started")

    # -- recover --------------------------------------------------------------------------------

    async def _recover(self) -> Any:
        from relay.ckpt.verify import recover_local

        cfg = self.cfg
        if cfg.remote:
            self._open_remote()
        # a predecessor on this volume may have left complete checkpoints uncommitted (kill -9). Commit
        # them, but push nothing before the resume point is chosen: this epoch is newer than the remote's,
        # so pushing an older local step would replace the remote's newer checkpoints (found by the chaos
        # suite: a graceful handoff's checkpoint 120 wiped by a stale step 50 from a dead pod's volume).
        await self._commit_ready(sync=False)
        scan = await in_thread(recover_local, self.layout)  # verifies; quarantines what fails
        for skipped in getattr(scan, "skipped", []) or []:
            log.warning("skipping checkpoint %s: %s", skipped.path, skipped.reason)
        local = scan.checkpoint
        remote_step: int | None = None
        if self.remote is not None:
            state = await self._remote_state()
            remote_step = state.step if state is not None else None
            self.reporter.remote_step = remote_step
        if remote_step is not None and (local is None or remote_step > local.step):
            from relay.remote.base import RemoteCorruptError

            started = time.monotonic()
            try:
                pulled = await in_thread(self.remote.pull_newest, self.layout)
            except RemoteCorruptError as exc:
                if local is None:
                    raise
                # nothing on the remote verifies: the volume's checkpoint is the best there is
                log.warning("remote unusable (%s); resuming from the local step %d", exc, local.step)
                pulled = None
            if pulled is not None:
                self.latest = pulled
                self.step = pulled.step
                self.reporter.step = pulled.step
                self.reporter.checkpoint = (pulled.step, str(pulled.path), None)
                self.events.emit(
                    "resumed",
                    step=pulled.step,
                    source="remote",
                    path=str(pulled.path),
                    bytes=getattr(pulled, "total_bytes", None),
                    download_s=round(time.monotonic() - started, 3),
                    skipped=len(getattr(scan, "skipped", []) or []) or None,
                )
                return pulled
        if local is not None:
            self.latest = local
            self.step = local.step
            self.reporter.step = local.step
            self.reporter.checkpoint = (local.step, str(local.path), None)
            self.events.emit(
                "resumed", step=local.step, source="local", path=str(local.path), remote_step=remote_step
            )
            if self.syncer is not None and (remote_step is None or remote_step < local.step):
                self.syncer.submit(local)  # the remote is behind this volume: catch it up
            return local
        self.events.emit("resumed", step=0, source="cold_start", message="no checkpoint found: cold start")
        return None

    def _open_remote(self) -> None:
        from relay.remote import open_remote

        self.remote = open_remote(self.cfg.remote, self.run_id, token=self.cfg.token())
        self.syncer = make_syncer(self)

    async def _remote_state(self) -> Any:
        from relay.remote.base import RemoteError

        delay = 0.5
        for attempt in range(4):
            try:
                return await in_thread(self.remote.state)
            except RemoteError as exc:
                if not getattr(exc, "retryable", False) or attempt == 3:
                    raise
                log.warning("remote state failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
        return None

    # -- commits --------------------------------------------------------------------------------

    def _kick_commit(self) -> None:
        """Start a commit pass unless one is running (never awaited by the supervisor loop)."""
        task = self._commit_task
        if task is not None and not task.done():
            return
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("commit pass failed: %s", task.exception())
        if self.fence.tripped:
            return
        self._commit_task = asyncio.ensure_future(self._commit_ready())

    async def _commit_all_now(self) -> None:
        """Finish the running commit pass, then one more (the final checkpoint)."""
        if self._commit_task is not None and not self._commit_task.done():
            with contextlib.suppress(Exception):
                await self._commit_task
        await self._commit_ready()

    async def _commit_ready(self, *, sync: bool = True) -> None:
        """Commit the newest complete staged checkpoint (older complete ones are superseded) and sync it
        (unless ``sync`` is False: recovery decides what to push once it knows the remote's step)."""
        from relay.ckpt.commit import commit_newest_staged
        from relay.ckpt.errors import CheckpointError, StaleStagedCheckpoint

        if self.fence.tripped:
            return
        started = time.monotonic()
        try:
            ckpt = await in_thread(
                commit_newest_staged, self.layout, epoch=self.epoch, keep_last_n=self.cfg.ckpt_keep_last_n
            )
        except StaleStagedCheckpoint as exc:
            log.warning("%s", exc)
            return
        except CheckpointError as exc:
            log.error("checkpoint commit failed: %s", exc)
            self.tlog.note(f"checkpoint commit failed: {exc}")
            return
        if ckpt is None:
            return
        if self.fence.tripped:
            return  # committed while being fenced: it stays on the volume, nothing is handed on
        self.latest = ckpt
        self.reporter.checkpoint = (ckpt.step, str(ckpt.path), None)
        self.events.emit(
            "checkpoint_committed",
            step=ckpt.step,
            path=str(ckpt.path),
            bytes=ckpt.total_bytes,
            commit_s=round(time.monotonic() - started, 3),
        )
        if sync and self.syncer is not None:
            self.syncer.submit(ckpt)

    def _clear_staging(self) -> None:
        """Remove what a dead trainer left half-written, so the next one cannot trip over it."""
        staging = self.layout.staging_dir
        if not staging.is_dir():
            return
        for entry in staging.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    # -- sync -----------------------------------------------------------------------------------

    def _stop_syncer_now(self) -> None:
        if self.syncer is not None:
            with contextlib.suppress(Exception):
                self.syncer.stop_now()

    async def _wait_synced(self, step: int, timeout_s: float | None) -> bool:
        """Wait until the remote holds ``step`` (True), the syncer gave up, the fence tripped, or time is up."""
        if self.syncer is None:
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self.stop_requested.is_set() and self.agent.stop_at is not None:
                # a signal during a long final upload: what is left of grace_s bounds it
                cap = self.agent.stop_at + self.cfg.grace_s
                deadline = cap if deadline is None else min(deadline, cap)
            if self.syncer.synced_step() is not None and self.syncer.synced_step() >= step:
                return True
            if self.fence.tripped or self.syncer.gave_up(step):
                return False
            if self.force_requested.is_set():
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.sleep(0.02 if remaining is None else min(0.02, remaining))

    # -- training -------------------------------------------------------------------------------

    def _write_train_config(self) -> None:
        path = self.layout.train_config_file
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(
            json.dumps(self.cfg.train, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
        os.replace(tmp, path)

    def _trainer_env(self, resume: Any) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RELAY_SHARED_SECRET", None)  # the trainer never talks to the commander
        env.update(
            RELAY_RUN_ID=self.run_id,
            RELAY_MODE=self.cfg.mode,
            RELAY_EPOCH=str(self.epoch),
            RELAY_WORKER_ID=self.cfg.worker_id,
            RELAY_OUTPUT_DIR=str(self.layout.staging_dir),
            RELAY_RESUME_FROM=str(resume.path) if resume is not None else "",
            RELAY_PROGRESS_FILE=str(self.layout.progress_file),
            RELAY_TRAIN_CONFIG=str(self.layout.train_config_file),
            RELAY_PYTHON=sys.executable,
            PYTHONUNBUFFERED="1",
        )
        token = self.cfg.token()
        if token:
            env["HF_TOKEN"] = token
        return env

    async def _launch(self, resume: Any, attempt: int) -> TrainerProcess:
        argv = trainer_argv(self.cfg.launcher_dir(), self.cfg.mode)
        if not Path(argv[-1]).is_file():
            raise FileNotFoundError(
                f"trainer launcher {argv[-1]} not found (trainer_dir / RELAY_TRAINER_DIR?)"
            )
        await in_thread(self._clear_staging)
        self._write_train_config()
        trainer = await TrainerProcess.start(
            argv, env=self._trainer_env(resume), cwd=self.layout.run_dir, log_=self.tlog
        )
        self.trainer = trainer
        self.fence.set_hook("trainer", lambda: trainer.kill_now(self.cfg.kill_grace_s))
        self.events.emit(
            "trainer_started",
            pid=trainer.pid,
            attempt=attempt,
            resume_from=str(resume.path) if resume is not None else None,
            resume_step=resume.step if resume is not None else None,
        )
        self.tlog.note(
            f"trainer started: pid {trainer.pid}, attempt {attempt}, "
            f"resume step {resume.step if resume is not None else 0}"
        )
        return trainer

    async def _train(self, resume: Any) -> Outcome:
        cfg = self.cfg
        policy = RestartPolicy(cfg.max_restarts, cfg.restart_backoff_s, cfg.restart_backoff_max_s)
        watchdog = Watchdog(
            hang_timeout_s=cfg.hang_timeout_s,
            startup_timeout_s=cfg.startup_timeout_s,
            max_runtime_s=cfg.max_runtime_s,
        )
        progress = ProgressTail(self.layout.progress_file)
        attempt = 0
        while True:
            self.goto(S.LAUNCHING)
            self._check_fence()
            progress.skip_to_end()  # before the spawn: a fast trainer's first line must not be skipped
            try:
                trainer = await self._launch(resume, attempt)
            except (OSError, FileNotFoundError) as exc:
                detail = f"cannot start the trainer: {exc}"
                log.error("%s", detail)
                self.goto(S.RELEASING)
                return await self._release("failed", EXIT_FAILED, detail)
            watchdog.trainer_started()
            self.goto(S.SUPERVISING)
            why = await self._supervise(trainer, progress, watchdog)
            if why == "fenced":
                raise _Stop("fenced")
            if why in ("preempted", "cancelled", "runtime"):
                self.goto(S.STOPPING)
                await self._stop_trainer(trainer, progress, watchdog, why)
                return await self._finish(why)
            rc = trainer.returncode
            if why == "exit" and rc == 0:
                self.tlog.note("trainer exited 0")
                self.goto(S.FINALIZING)
                return await self._finish("completed")
            # a crash or a hang
            if why == "hang":
                limit = watchdog.hang_limit() or 0
                self.events.emit(
                    "hang_detected", step=self.step, silence_s=round(watchdog.silence_s(), 1), limit_s=limit
                )
                self.tlog.note(f"no progress for {watchdog.silence_s():.1f}s: killing the trainer")
                rc = await trainer.stop(cfg.kill_grace_s)
                report = ExitReport(rc, None, False, f"hung (no progress for {limit:g}s)")
            else:
                report = classify_exit(rc, self.tlog.tail(80))
                self.tlog.note(f"trainer {report.reason}")
                log.warning("trainer %s", report.reason)
            delay = policy.next_delay()
            self.goto(S.RESTARTING)
            await self._commit_all_now()
            self._check_fence()
            if delay is None:
                self.goto(S.FINALIZING)
                return await self._give_up(report, policy)
            try:
                await self._guarded(asyncio.sleep(delay))
            except _Stop:
                if self.fence.tripped:
                    raise
                self.goto(S.FINALIZING)
                return await self._finish(
                    "cancelled" if self.keeper.cancel_requested.is_set() else "preempted"
                )
            attempt += 1
            resume = self.latest
            self.events.emit(
                "trainer_restarted",
                attempt=attempt,
                reason=report.reason,
                exit_code=report.exit_code,
                oom=report.oom or None,
                resume_step=resume.step if resume is not None else 0,
                backoff_s=delay,
            )

    async def _supervise(self, trainer: TrainerProcess, progress: ProgressTail, watchdog: Watchdog) -> str:
        """Until something needs a decision: 'exit', 'hang', 'runtime', 'preempted', 'cancelled', 'fenced'."""
        exit_task = asyncio.ensure_future(asyncio.shield(trainer.proc.wait()))
        stop_task = asyncio.ensure_future(self.stop_requested.wait())
        cancel_task = asyncio.ensure_future(self.keeper.cancel_requested.wait())
        waits = {exit_task, stop_task, cancel_task, self._fence_waiter()}
        try:
            while True:
                await asyncio.wait(waits, timeout=TICK_S, return_when=asyncio.FIRST_COMPLETED)
                self._poll_progress(progress, watchdog)
                if self.fence.tripped:
                    return "fenced"
                self._kick_commit()
                if exit_task.done():
                    await trainer.wait()
                    self._poll_progress(progress, watchdog)
                    if self.stop_requested.is_set():  # it saved on a signal meant for us: not done
                        return "preempted"
                    if self.keeper.cancel_requested.is_set():
                        return "cancelled"
                    return "exit"
                if self.stop_requested.is_set():
                    return "preempted"
                if self.keeper.cancel_requested.is_set():
                    return "cancelled"
                verdict = watchdog.check()
                if verdict is Verdict.HANG:
                    return "hang"
                if verdict is Verdict.RUNTIME_EXCEEDED:
                    return "runtime"
        finally:
            for t in (exit_task, stop_task, cancel_task):
                t.cancel()

    def _poll_progress(self, progress: ProgressTail, watchdog: Watchdog) -> None:
        lines = progress.poll()
        if not lines:
            return
        watchdog.progress()
        last = lines[-1]
        self.step = last.step
        self.reporter.step = last.step
        if last.metrics:
            self.reporter.metrics = last.metrics

    async def _stop_trainer(
        self, trainer: TrainerProcess, progress: ProgressTail, watchdog: Watchdog, why: str
    ) -> None:
        """SIGTERM the trainer's group; wait up to grace_s for it to save and exit, committing meanwhile."""
        grace = self.cfg.grace_s
        reason = {
            "preempted": self.agent.signal_name or "preemption",
            "cancelled": "cancel requested",
            "runtime": f"max_runtime_s ({self.cfg.max_runtime_s}s) reached",
        }[why]
        self.tlog.note(f"{reason}: SIGTERM to the trainer, {grace:g}s to save and exit")
        self._stop_started = time.monotonic()
        trainer.signal_group(signal.SIGTERM)
        exit_task = asyncio.ensure_future(asyncio.shield(trainer.proc.wait()))
        force_task = asyncio.ensure_future(self.force_requested.wait())
        deadline = self._stop_started + grace
        try:
            while not exit_task.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.force_requested.is_set():
                    self.tlog.note("trainer still running at the end of the grace period: SIGKILL")
                    trainer.signal_group(signal.SIGKILL)
                    break
                await asyncio.wait(
                    {exit_task, force_task, self._fence_waiter()},
                    timeout=min(STOP_TICK_S, remaining),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                self._poll_progress(progress, watchdog)
                self._check_fence()
                self._kick_commit()
        finally:
            force_task.cancel()
        rc = await trainer.wait()
        self._poll_progress(progress, watchdog)
        self.tlog.note(f"trainer exited with code {rc}")
        self._check_fence()
        self.goto(S.FINALIZING)

    def _grace_left(self) -> float:
        """What is left of grace_s, counted from the signal (or from the start of a cancel/runtime stop)."""
        started = (
            self.agent.stop_at if self.agent.stop_at is not None else getattr(self, "_stop_started", None)
        )
        if started is None:
            return self.cfg.grace_s
        return max(0.0, started + self.cfg.grace_s - time.monotonic())

    async def _finish(self, why: str) -> Outcome:
        """FINALIZING: commit the final checkpoint, wait for its upload as the outcome requires, release."""
        await self._commit_all_now()
        self._check_fence()
        latest_step = self.latest.step if self.latest is not None else None
        synced = True
        if latest_step is not None and self.syncer is not None and why != "cancelled":
            if why == "completed" and not self.stop_requested.is_set():
                timeout = self.cfg.final_sync_timeout_s
            else:
                timeout = self._grace_left()
            synced = await self._wait_synced(latest_step, timeout)
            self._check_fence()
            if not synced:
                log.warning("checkpoint step %s was not synced before the release", latest_step)
        note = "" if synced else f"; checkpoint step {latest_step} NOT synced to the remote"
        self.goto(S.RELEASING)
        if why == "completed":
            return await self._release("completed", EXIT_OK, f"trainer finished at step {self.step}{note}")
        if why == "cancelled":
            return await self._release("cancelled", EXIT_OK, f"cancelled at step {self.step}")
        if why == "runtime":
            detail = f"max_runtime_s ({self.cfg.max_runtime_s:g}s) reached at step {self.step}{note}"
            return await self._release("failed", EXIT_FAILED, detail)
        sig = self.agent.signal_name or "stop"
        return await self._release(
            "preempted", EXIT_OK, f"{sig} at step {self.step}, checkpoint {latest_step}{note}"
        )

    async def _give_up(self, report: ExitReport, policy: RestartPolicy) -> Outcome:
        tail = self.tlog.tail(40)
        what = "CUDA out of memory" if report.oom else report.reason
        detail = (
            f"trainer {what} after {policy.restarts} restart(s) (max_restarts={policy.max_restarts}); "
            f"last log lines:\n{_tail_text(tail)}"
        )
        self.goto(S.RELEASING)
        return await self._release(
            "failed", EXIT_FAILED, detail, exit_code=report.exit_code, oom=report.oom, log_tail=tail
        )

    # -- release / fenced -----------------------------------------------------------------------

    async def _release(self, outcome: str, code: int, detail: str, **fields: Any) -> Outcome:
        from relay.client import CommanderUnreachable, Fenced
        from relay.schema import ReleaseRequest

        await self.reporter.flush(timeout_s=min(2.0, max(0.2, self.keeper.remaining_s())))
        await self.reporter.stop()
        await self.keeper.stop()
        if self.fence.tripped:
            return await self._fenced()
        req = ReleaseRequest(
            run_id=self.run_id,
            worker_id=self.cfg.worker_id,
            lease_id=self.lease_id,
            epoch=self.epoch,
            outcome=outcome,
            detail=detail[:8000],
        )
        released = False
        started = time.monotonic()
        status = None
        for attempt in range(5):
            try:
                resp = await self.client.release(req)
                released, status = True, getattr(resp, "status", None)
                break
            except Fenced as exc:
                log.error("release refused: %s (the lease had already ended)", exc)
                break
            except CommanderUnreachable as exc:
                if self.keeper.remaining_s() <= 0 or attempt == 4:
                    log.error("could not release (%s); the lease will expire on its own", exc)
                    break
                await asyncio.sleep(min(0.2 * 2**attempt, max(0.05, self.keeper.remaining_s())))
        self.events.emit(
            outcome,
            message=detail.splitlines()[0] if detail else None,
            step=self.step,
            checkpoint_step=self.latest.step if self.latest is not None else None,
            released=released,
            status=getattr(status, "value", status),
            release_s=round(time.monotonic() - started, 3),
            **fields,
        )
        line = detail.splitlines()[0] if detail else ""
        print(f"relay worker: run {self.run_id} {outcome}: {line}", file=sys.stderr)
        return Outcome(outcome, code, detail, self.step)

    async def _fenced(self) -> Outcome:
        reason = self.fence.reason or "fenced"
        if self.agent.state is not S.FENCED:
            self.goto(S.FENCED)
        trainer = self.trainer
        if trainer is not None and trainer.returncode is None:
            trainer.kill_now(self.cfg.kill_grace_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(trainer.proc.wait()), timeout=self.cfg.kill_grace_s + 2)
        self.events.emit("fenced", message=reason, step=self.step)
        await self.reporter.stop()
        await self.keeper.stop()
        print(
            f"relay worker: FENCED on run {self.run_id} (epoch {self.epoch}): {reason}; the trainer was "
            "killed and nothing more is committed or synced",
            file=sys.stderr,
        )
        return Outcome(None, EXIT_FENCED, reason, self.step)

    async def _cleanup(self) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.returncode is None:  # never leave a trainer behind
            trainer.kill_now(self.cfg.kill_grace_s)
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(trainer.wait(), timeout=self.cfg.kill_grace_s + 2)
        if trainer is not None:
            trainer.disarm_guard()
        await self.reporter.stop()
        await self.keeper.stop()
        if self._commit_task is not None and not self._commit_task.done():
            self._commit_task.cancel()
        if self._fence_task is not None:
            self._fence_task.cancel()
        if self.syncer is not None:
            with contextlib.suppress(Exception):
                self.syncer.close()
        self.events.close()
        self.tlog.close()
        if self._file_log is not None:
            logging.getLogger("relay").removeHandler(self._file_log)
            self._file_log.close()


def make_syncer(session: RunSession) -> Any:
    """Adapter between the session and relay.remote.sync.Syncer (see SyncPort)."""
    from relay.worker.sync_port import SyncPort

    return SyncPort(session)
