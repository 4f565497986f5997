"""One granted run under one epoch: recover -> launch -> supervise -> (restart | stop) -> finalize -> release.

A :class:`RunSession` is created for each lease the agent obtains and drives it through the states
of :mod:`relay.worker.lifecycle`.  It owns the lease's collaborators (the lease keeper that renews
and self-fences, the reporter, the event log, the trainer process and its log, the run's
checkpoints and their syncer, state.json) and is the only place that decides what happens next:
restart after a crash or hang, stop on a signal, cancel or ``max_runtime_s``, wait for the final
upload, and the release outcome.  Which checkpoint to resume from is :mod:`relay.worker.recovery`;
committing and syncing is :mod:`relay.worker.checkpoints`.

Slow work (listing and committing checkpoints, hashing, pulls) runs in daemon threads and uploads
in the syncer, so neither the renewal task nor the supervisor loop ever waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from relay.config import ConfigError, WorkerConfig, validate_config
from relay.worker.checkpoints import Checkpoints
from relay.worker.events import EventLog
from relay.worker.launcher import TrainerLog, TrainerProcess, trainer_argv, trainer_env, write_train_config
from relay.worker.lease_keeper import Fence, LeaseKeeper
from relay.worker.lifecycle import EXIT_FAILED, EXIT_FENCED, EXIT_OK, Outcome, State
from relay.worker.progress import ProgressTail
from relay.worker.recovery import recover
from relay.worker.reporter import Reporter
from relay.worker.state_file import StateFile
from relay.worker.threads import in_thread
from relay.worker.watchdog import ExitReport, RestartPolicy, Verdict, Watchdog, classify_exit

if TYPE_CHECKING:
    from relay.ckpt.manifest import CommittedCheckpoint
    from relay.client import CommanderClient
    from relay.schema import AcquireGranted, RunSpec
    from relay.worker.agent import Agent

log = logging.getLogger("relay.worker")
S = State
T = TypeVar("T")

TICK_S = 0.25  # supervisor poll period: progress, staged checkpoints, watchdog
STOP_TICK_S = 0.05  # while waiting for a final checkpoint, poll faster: it is on the handoff's path
STATE_FLUSH_S = 1.0  # at the end of a lease, wait at most this long for the last state.json write


def _tail_text(lines: list[str], limit: int = 3000) -> str:
    text = "\n".join(lines)
    return text[-limit:]


def effective_config(cfg: WorkerConfig, spec: RunSpec | None) -> WorkerConfig:
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


class _Stop(Exception):
    """Raised inside a session when the lease must be given up now (fence, or a stop before training)."""


class RunSession:
    """Everything about carrying one granted run under one epoch."""

    def __init__(self, agent: Agent, client: CommanderClient, grant: AcquireGranted, sent_at: float) -> None:
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
        self.ckpts = Checkpoints(
            self.layout,
            epoch=self.epoch,
            keep_last_n=self.cfg.ckpt_keep_last_n,
            fence=self.fence,
            events=self.events,
            tlog=self.tlog,
            reporter=self.reporter,
            on_change=self._write_state,
        )
        self.state_file = StateFile(
            self.layout.state_file,
            run_id=self.run_id,
            worker_id=self.cfg.worker_id,
            epoch=self.epoch,
            remote=self.cfg.remote,
        )
        self.trainer: TrainerProcess | None = None
        self.step = 0
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
        self._write_state()

    def _write_state(self, *, state: str | None = None, outcome: str | None = None) -> None:
        """Refresh state.json (the volume's debug view; see relay.worker.state_file)."""
        latest = self.ckpts.latest
        self.state_file.update(
            state=state or self.agent.state.value,
            step=self.step,
            committed_step=latest.step if latest is not None else None,
            synced_step=self.reporter.remote_step,
            outcome=outcome,
        )

    def _check_fence(self) -> None:
        if self.fence.tripped:
            raise _Stop("fenced")

    async def _guarded(self, coro: Awaitable[T], *, stop_on_signal: bool = True) -> T:
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
        self.fence.set_hook("syncer", self.ckpts.stop_syncer_now)
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

    async def _recover(self) -> CommittedCheckpoint | None:
        """RECOVERING: open the remote, then choose the checkpoint to resume from (relay.worker.recovery)."""
        cfg = self.cfg
        if cfg.remote:
            self.ckpts.open_remote(
                cfg.remote,
                self.run_id,
                token=cfg.token(),
                remote_keep_last_n=cfg.remote_keep_last_n,
                loop=self.loop,
            )
        resume = await recover(self.layout, self.ckpts, reporter=self.reporter, events=self.events)
        if resume is not None:
            self.step = resume.step
        return resume

    # -- sync -----------------------------------------------------------------------------------

    async def _wait_synced(self, step: int, timeout_s: float | None) -> bool:
        """Wait until the remote holds ``step`` (True), the syncer gave up, the fence tripped, or time is up."""
        if self.ckpts.syncer is None:
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self.stop_requested.is_set() and self.agent.stop_at is not None:
                # a signal during a long final upload: what is left of grace_s bounds it
                cap = self.agent.stop_at + self.cfg.grace_s
                deadline = cap if deadline is None else min(deadline, cap)
            if self.ckpts.syncer.synced_step() is not None and self.ckpts.syncer.synced_step() >= step:
                return True
            if self.fence.tripped or self.ckpts.syncer.gave_up(step):
                return False
            if self.force_requested.is_set():
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.sleep(0.02 if remaining is None else min(0.02, remaining))

    # -- training -------------------------------------------------------------------------------

    async def _launch(self, resume: CommittedCheckpoint | None, attempt: int) -> TrainerProcess:
        argv = trainer_argv(self.cfg.launcher_dir(), self.cfg.mode)
        if not Path(argv[-1]).is_file():
            raise FileNotFoundError(
                f"trainer launcher {argv[-1]} not found (trainer_dir / RELAY_TRAINER_DIR?)"
            )
        await in_thread(self.ckpts.clear_staging)
        write_train_config(self.layout.train_config_file, self.cfg.train)
        trainer = await TrainerProcess.start(
            argv,
            env=trainer_env(self.cfg, self.layout, epoch=self.epoch, resume=resume),
            cwd=self.layout.run_dir,
            log_=self.tlog,
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

    async def _train(self, resume: CommittedCheckpoint | None) -> Outcome:
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
            # exit code 2 is a config/data error by the trainer contract: a restart would fail the same way
            # (a hung trainer that happens to exit 2 once killed is still restarted)
            delay = policy.next_delay() if why == "hang" or report.restartable else None
            self.goto(S.RESTARTING)
            await self.ckpts.commit_all_now()
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
            resume = self.ckpts.latest
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
                self.ckpts.kick()
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
                self.ckpts.kick()
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
        await self.ckpts.commit_all_now()
        self._check_fence()
        latest_step = self.ckpts.latest.step if self.ckpts.latest is not None else None
        synced = True
        if latest_step is not None and self.ckpts.syncer is not None and why != "cancelled":
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
        if report.restartable:
            why = f"after {policy.restarts} restart(s) (max_restarts={policy.max_restarts})"
        else:
            why = "not restarted: restarting cannot help"
        detail = f"trainer {what} {why}; last log lines:\n{_tail_text(tail)}"
        self.goto(S.RELEASING)
        return await self._release(
            "failed",
            EXIT_FAILED,
            detail,
            restartable=report.restartable,
            exit_code=report.exit_code,
            oom=report.oom,
            log_tail=tail,
        )

    # -- release / fenced -----------------------------------------------------------------------

    async def _release(
        self, outcome: str, code: int, detail: str, *, restartable: bool = True, **fields: Any
    ) -> Outcome:
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
            restartable=restartable,
            **self.reporter.final_progress(),
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
            checkpoint_step=self.ckpts.latest.step if self.ckpts.latest is not None else None,
            released=released,
            status=getattr(status, "value", status),
            release_s=round(time.monotonic() - started, 3),
            **fields,
        )
        self._write_state(state=S.DONE.value, outcome=outcome)  # this run is over for this worker
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
        self.ckpts.close()
        if self._fence_task is not None:
            self._fence_task.cancel()
        self.state_file.close()  # writes what is pending, then its thread ends
        self.events.close()
        self.tlog.close()
        if self._file_log is not None:
            logging.getLogger("relay").removeHandler(self._file_log)
            self._file_log.close()
        with contextlib.suppress(Exception):  # the last state.json lands before the worker may exit
            await in_thread(self.state_file.flush, STATE_FLUSH_S)
