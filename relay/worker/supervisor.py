"""Launch, watch and restart the trainer under one lease, until something needs the handoff to decide.

The supervisor walks LAUNCHING -> SUPERVISING -> (RESTARTING -> LAUNCHING)* -> STOPPING/FINALIZING of
:mod:`relay.worker.lifecycle` and answers with a typed :class:`SupervisorResult`:

- the trainer exited 0 on its own: the run is **completed**;
- a signal, a cancel or ``max_runtime_s``: SIGTERM the trainer's group, wait up to ``grace_s`` for it
  to save and exit (committing meanwhile): **preempted**, **cancelled**, **runtime**;
- a crash or a hang: back off and launch again from the newest committed checkpoint, or, when the
  restart budget is spent or restarting cannot help (exit code 2), **gave up**;
- the launcher could not be started: **launch failed**.

A tripped fence raises :class:`~relay.worker.context.Interrupted` from any phase; the session hands it
to the handoff.  While the trainer runs, the supervisor is the one writer of the run's step and
metrics (:class:`~relay.worker.progress.RunProgress`), and the only caller of the watchdog.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relay.backoff import Backoff
from relay.worker.cadence import Cadence
from relay.worker.context import Interrupted, RunContext
from relay.worker.launcher import TrainerProcess, trainer_argv, trainer_env, write_train_config
from relay.worker.lifecycle import State
from relay.worker.liveness import Liveness
from relay.worker.progress_tail import ProgressTail
from relay.worker.threads import in_thread
from relay.worker.volume import volume_problem
from relay.worker.watchdog import ExitReport, RestartPolicy, Verdict, Watchdog, classify_exit

if TYPE_CHECKING:
    from relay.ckpt.manifest import CommittedCheckpoint

log = logging.getLogger("relay.worker")
S = State

TICK_S = 0.25  # supervisor poll period: progress, staged checkpoints, watchdog
STOP_TICK_S = 0.05  # while waiting for a final checkpoint, poll faster: it is on the handoff's path


class Watch(str, enum.Enum):
    """Why watching a running trainer stopped."""

    EXITED = "exited"
    HUNG = "hung"
    RUNTIME = "runtime"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    FENCED = "fenced"


class Ending(str, enum.Enum):
    """How supervision ended: what the handoff must finish."""

    COMPLETED = "completed"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    RUNTIME = "runtime"
    GAVE_UP = "gave_up"
    LAUNCH_FAILED = "launch_failed"
    VOLUME = "volume"  # the trainer crashed and the pod's volume is full or read-only


#: a graceful stop's Watch -> Ending
_STOPS = {Watch.PREEMPTED: Ending.PREEMPTED, Watch.CANCELLED: Ending.CANCELLED, Watch.RUNTIME: Ending.RUNTIME}


@dataclass(frozen=True)
class SupervisorResult:
    ending: Ending
    report: ExitReport | None = None  # GAVE_UP: the last exit
    policy: RestartPolicy | None = None  # GAVE_UP: the restarts spent
    detail: str = ""  # LAUNCH_FAILED, VOLUME: why


class Supervisor:
    """Runs the trainer for one lease (see the module docstring)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        self.policy = RestartPolicy(
            cfg.max_restarts, Backoff(cfg.restart_backoff_s, cfg.restart_backoff_max_s, jitter=0.0)
        )
        self.watchdog = Watchdog(
            hang_timeout_s=cfg.hang_timeout_s,
            startup_timeout_s=cfg.startup_timeout_s,
            max_runtime_s=cfg.max_runtime_s,
        )
        self.tail = ProgressTail(ctx.layout.progress_file)
        self.liveness = Liveness(cfg.liveness, self.tail, ctx.tlog, ctx.progress)
        self.trainer: TrainerProcess | None = None
        self.stop_started: float | None = None
        self.cadence = Cadence(ctx)  # asks the trainer for saves by wall time (save_every_s)

    async def run(self, resume: CommittedCheckpoint | None) -> SupervisorResult:
        ctx = self.ctx
        if resume is not None:
            ctx.progress.trained(resume.step)
        await self.cadence.start()
        attempt = 0
        while True:
            ctx.goto(S.LAUNCHING)
            ctx.check_fence()
            self.tail.skip_to_end()  # before the spawn: a fast trainer's first line must not be skipped
            try:
                trainer = await self._launch(resume, attempt)
            except OSError as exc:
                detail = f"cannot start the trainer: {exc}"
                log.error("%s", detail)
                ctx.goto(S.RELEASING)
                return SupervisorResult(Ending.LAUNCH_FAILED, detail=detail)
            self.watchdog.trainer_started()
            self.liveness.trainer_started()
            ctx.goto(S.SUPERVISING)
            why = await self._watch(trainer)
            if why is Watch.FENCED:
                raise Interrupted(fenced=True)
            if why in _STOPS:
                ctx.goto(S.STOPPING)
                await self._stop_trainer(trainer, why)
                return SupervisorResult(_STOPS[why])
            if why is Watch.EXITED and trainer.returncode == 0:
                ctx.tlog.note("trainer exited 0")
                ctx.goto(S.FINALIZING)
                return SupervisorResult(Ending.COMPLETED)
            report, delay = await self._failed(trainer, why)
            ctx.goto(S.RESTARTING)
            await ctx.ckpts.commit_all_now()
            ctx.check_fence()
            volume = await self._volume_trouble() if why is Watch.EXITED else None
            if delay is None or volume is not None:  # a full or read-only volume: a restart cannot help
                ctx.goto(S.FINALIZING)
                ending = Ending.GAVE_UP if volume is None else Ending.VOLUME
                return SupervisorResult(ending, report=report, policy=self.policy, detail=volume or "")
            try:
                await ctx.guarded(asyncio.sleep(delay))
            except Interrupted as exc:
                if exc.fenced:
                    raise
                ctx.goto(S.FINALIZING)
                cancelled = ctx.cancel_requested.is_set()
                return SupervisorResult(Ending.CANCELLED if cancelled else Ending.PREEMPTED)
            attempt += 1
            resume = ctx.ckpts.latest
            ctx.events.emit(
                "trainer_restarted",
                attempt=attempt,
                reason=report.reason,
                exit_code=report.exit_code,
                oom=report.oom or None,
                resume_step=resume.step if resume is not None else 0,
                backoff_s=delay,
            )

    # -- launch ---------------------------------------------------------------------------------

    async def _launch(self, resume: CommittedCheckpoint | None, attempt: int) -> TrainerProcess:
        ctx = self.ctx
        argv = trainer_argv(ctx.cfg.launcher_dir(), ctx.cfg.mode)
        if not Path(argv[-1]).is_file():
            raise FileNotFoundError(
                f"trainer launcher {argv[-1]} not found (trainer_dir / RELAY_TRAINER_DIR?)"
            )
        await in_thread(ctx.ckpts.clear_staging)
        write_train_config(ctx.layout.train_config_file, ctx.cfg.train)
        self.cadence.launching()
        trainer = await TrainerProcess.start(
            argv,
            env=trainer_env(ctx.cfg, ctx.layout, epoch=ctx.lease.epoch, resume=resume),
            cwd=ctx.layout.run_dir,
            log_=ctx.tlog,
            deadline=ctx.keeper.deadline,
            kill_grace_s=ctx.cfg.kill_grace_s,
            guard_log=ctx.layout.logs_dir / "guard.log",
        )
        self.trainer = trainer
        ctx.keeper.watch_deadline(trainer.set_deadline)  # the guard kills it when the lease is unproven
        ctx.fence.set_hook("trainer", lambda: trainer.kill_now(ctx.cfg.kill_grace_s))
        resume_step = resume.step if resume is not None else None
        ctx.events.emit(
            "trainer_started",
            pid=trainer.pid,
            attempt=attempt,
            resume_from=str(resume.path) if resume is not None else None,
            resume_step=resume_step,
        )
        ctx.tlog.note(
            f"trainer started: pid {trainer.pid}, attempt {attempt}, resume step {resume_step or 0}"
        )
        return trainer

    # -- watch ----------------------------------------------------------------------------------

    async def _watch(self, trainer: TrainerProcess) -> Watch:
        """Until something needs a decision."""
        ctx = self.ctx
        exit_task = asyncio.ensure_future(asyncio.shield(trainer.proc.wait()))
        stop_task = asyncio.ensure_future(ctx.signals.stop_requested.wait())
        cancel_task = asyncio.ensure_future(ctx.cancel_requested.wait())
        waits = {exit_task, stop_task, cancel_task, ctx.fence_waiter()}
        try:
            while True:
                await asyncio.wait(waits, timeout=TICK_S, return_when=asyncio.FIRST_COMPLETED)
                self.poll_progress()
                if ctx.fence.tripped:
                    return Watch.FENCED
                ctx.ckpts.kick()
                if exit_task.done():
                    await trainer.wait()
                    self.poll_progress()
                    return self._asked() or Watch.EXITED  # it saved on a signal meant for us: not done
                asked = self._asked()
                if asked is not None:
                    return asked
                self.cadence.tick()
                verdict = self.watchdog.check()
                if verdict is Verdict.HANG:
                    return Watch.HUNG
                if verdict is Verdict.RUNTIME_EXCEEDED:
                    return Watch.RUNTIME
        finally:
            for t in (exit_task, stop_task, cancel_task):
                t.cancel()

    def _asked(self) -> Watch | None:
        """A stop somebody asked for: a signal first, then a cancel."""
        if self.ctx.signals.stop_requested.is_set():
            return Watch.PREEMPTED
        if self.ctx.cancel_requested.is_set():
            return Watch.CANCELLED
        return None

    def poll_progress(self) -> None:
        """Feed the watchdog and the run's step from the best evidence (relay.worker.liveness)."""
        seen = self.liveness.poll()
        if not seen.alive:
            return
        self.watchdog.progress()
        self.cadence.lines(seen.lines)
        self.ctx.progress.trained(
            seen.step if seen.step is not None else self.ctx.progress.step, seen.metrics
        )

    # -- stop -------------------------------------------------------------------------------------

    async def _stop_trainer(self, trainer: TrainerProcess, why: Watch) -> None:
        """SIGTERM the trainer's group; wait up to grace_s for it to save and exit, committing meanwhile."""
        ctx = self.ctx
        cfg = ctx.cfg
        reason = {
            Watch.PREEMPTED: ctx.signals.name or "preemption",
            Watch.CANCELLED: "cancel requested",
            Watch.RUNTIME: f"max_runtime_s ({cfg.max_runtime_s}s) reached",
        }[why]
        ctx.tlog.note(f"{reason}: SIGTERM to the trainer, {cfg.grace_s:g}s to save and exit")
        self.stop_started = time.monotonic()
        trainer.signal_group(signal.SIGTERM)
        exit_task = asyncio.ensure_future(asyncio.shield(trainer.proc.wait()))
        force = ctx.signals.force_requested
        force_task = asyncio.ensure_future(force.wait())
        deadline = self.stop_started + cfg.grace_s
        try:
            while not exit_task.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or force.is_set():
                    ctx.tlog.note("trainer still running at the end of the grace period: SIGKILL")
                    trainer.signal_group(signal.SIGKILL)
                    break
                await asyncio.wait(
                    {exit_task, force_task, ctx.fence_waiter()},
                    timeout=min(STOP_TICK_S, remaining),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                self.poll_progress()
                ctx.check_fence()
                ctx.ckpts.kick()
        finally:
            force_task.cancel()
        rc = await trainer.wait()
        self.poll_progress()
        ctx.tlog.note(f"trainer exited with code {rc}")
        ctx.check_fence()
        ctx.goto(S.FINALIZING)

    # -- crash / hang -------------------------------------------------------------------------------

    async def _failed(self, trainer: TrainerProcess, why: Watch) -> tuple[ExitReport, float | None]:
        """Name a crash or a hang (killing a hung trainer) and decide the restart delay (None: give up)."""
        ctx = self.ctx
        if why is Watch.HUNG:
            limit = self.watchdog.hang_limit() or 0
            silence = self.watchdog.silence_s()
            ctx.events.emit(
                "hang_detected", step=ctx.progress.step, silence_s=round(silence, 1), limit_s=limit
            )
            ctx.tlog.note(f"no progress for {silence:.1f}s: killing the trainer")
            rc = await trainer.stop(ctx.cfg.kill_grace_s)
            # a hung trainer that happens to exit 2 once killed is still restarted
            return ExitReport(rc, None, False, f"hung (no progress for {limit:g}s)"), self.policy.next_delay()
        report = classify_exit(trainer.returncode, ctx.tlog.tail(80))
        ctx.tlog.note(f"trainer {report.reason}")
        log.warning("trainer %s", report.reason)
        # exit code 2 is a config/data error by the trainer contract: a restart would fail the same way
        return report, self.policy.next_delay() if report.restartable else None

    async def _volume_trouble(self) -> str | None:
        """After a crash: can the volume take the next checkpoint (relay.worker.volume)? None: it can."""
        ctx = self.ctx
        await in_thread(
            ctx.ckpts.clear_staging
        )  # what the dead trainer left is removed before a launch anyway
        latest = ctx.ckpts.latest
        need = latest.total_bytes if latest is not None else 0
        return await in_thread(volume_problem, [ctx.layout.staging_dir, ctx.layout.ckpt_dir], need_bytes=need)

    def grace_left(self) -> float:
        """What is left of grace_s, counted from the signal (or from the start of a cancel/runtime stop)."""
        return self.ctx.signals.grace_left(self.stop_started)
