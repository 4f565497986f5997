"""One granted run under one epoch: recover -> supervise -> hand off.

A :class:`RunSession` is created for each lease the agent obtains.  It builds the lease's collaborators
(:class:`~relay.worker.context.RunContext`: the lease keeper that renews and self-fences, the reporter,
the event log, the trainer log, the run's checkpoints and progress, state.json) and runs the three
phases in order, each in its own module:

1. RECOVERING: choose the checkpoint to resume from (:mod:`relay.worker.recovery`);
2. supervise the trainer: launch, watch, restart (:mod:`relay.worker.supervisor`);
3. finalize and release (:mod:`relay.worker.handoff`), or, when the fence trips in any phase, end
   fenced.

Slow work (listing and committing checkpoints, hashing, pulls) runs in daemon threads and uploads in
the syncer, so neither the renewal task nor the supervisor loop ever waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from relay.config import ConfigError, WorkerConfig, validate_config
from relay.schema import ReleaseOutcome
from relay.worker.checkpoints import Checkpoints
from relay.worker.context import Interrupted, RunContext
from relay.worker.events import EventLog
from relay.worker.fence import Fence
from relay.worker.handoff import Handoff
from relay.worker.lease_keeper import LeaseKeeper
from relay.worker.lifecycle import EXIT_CONFIG, Lifecycle, Outcome, State
from relay.worker.progress import RunProgress
from relay.worker.recovery import claim_remote, recover
from relay.worker.reporter import Reporter
from relay.worker.state_file import StateFile
from relay.worker.supervisor import Supervisor
from relay.worker.threads import in_thread
from relay.worker.timing import lease_problem
from relay.worker.trainer_log import TrainerLog
from relay.worker.volume import QuietFileHandler, volume_error

if TYPE_CHECKING:
    from relay.ckpt.layout import RunLayout
    from relay.ckpt.manifest import CommittedCheckpoint
    from relay.client import CommanderClient
    from relay.schema import RunSpec
    from relay.worker.lease import Lease
    from relay.worker.signals import StopSignals
    from relay.worker.standby import Standby

log = logging.getLogger("relay.worker")
S = State

STATE_FLUSH_S = 1.0  # at the end of a lease, wait at most this long for the last state.json write


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
    if spec.trainer_cmd is not None:
        data["trainer_cmd"] = spec.trainer_cmd
    try:
        return validate_config(data, {key: "run spec" for key in ("mode", "train", "remote", "max_restarts")})
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.message, "run spec") from None


class RunSession:
    """Everything about carrying one granted run under one epoch."""

    def __init__(
        self,
        cfg: WorkerConfig,
        client: CommanderClient,
        lease: Lease,
        *,
        signals: StopSignals,
        lifecycle: Lifecycle,
        standby: Standby | None = None,
    ) -> None:
        cfg = effective_config(cfg, lease.spec)
        layout, events, tlog = _open_run_dir(cfg, lease)
        fence = Fence(asyncio.get_running_loop())
        progress = RunProgress()
        self.ctx = ctx = RunContext(
            cfg=cfg,
            client=client,
            lease=lease,
            layout=layout,
            lifecycle=lifecycle,
            signals=signals,
            fence=fence,
            events=events,
            tlog=tlog,
            progress=progress,
            keeper=LeaseKeeper(client, lease, safety_margin_s=cfg.renew_safety_margin_s, fence=fence),
            reporter=Reporter(
                client,
                lease,
                progress=progress,
                events=events,
                trainer_log=tlog,
                fence=fence,
                interval_s=cfg.report_interval_s,
            ),
            ckpts=Checkpoints(
                layout,
                epoch=lease.epoch,
                keep_last_n=cfg.ckpt_keep_last_n,
                fence=fence,
                events=events,
                tlog=tlog,
                progress=progress,
            ),
            state_file=StateFile(layout.state_file, lease, remote=cfg.remote),
        )
        progress.subscribe(ctx.write_state)
        self.supervisor = Supervisor(ctx)
        self.handoff = Handoff(ctx, self.supervisor)
        self._file_log: logging.Handler | None = None
        self.standby = standby  # the warm standby of the wait for this lease: stopped before recovery

    async def run(self) -> Outcome:
        ctx = self.ctx
        self._file_log = QuietFileHandler.open(ctx.layout.logs_dir / "worker.log")
        if self._file_log is not None:
            self._file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger("relay").addHandler(self._file_log)
        unsafe = lease_problem(
            ctx.lease.ttl_s, ctx.lease.renew_interval_s, ctx.cfg.renew_safety_margin_s, ctx.cfg.kill_grace_s
        )
        if unsafe is None:
            ctx.keeper.start()
            ctx.reporter.start()
        try:
            return await self._run(unsafe)
        except Interrupted:
            if ctx.fence.tripped:
                return await self.handoff.fenced()
            raise
        finally:
            if self.standby is not None:  # ended before recovery (fenced, signalled): never left running
                await self.standby.stop()
            await self._cleanup()

    async def _run(self, unsafe: str | None) -> Outcome:
        ctx = self.ctx
        lease = ctx.lease
        ctx.goto(S.RECOVERING)
        ctx.fence.set_hook("syncer", ctx.ckpts.stop_syncer_now)
        ctx.events.emit(
            "acquired",
            lease_id=lease.lease_id,
            ttl_s=lease.ttl_s,
            renew_interval_s=lease.renew_interval_s,
            margin_s=ctx.keeper.margin_s,
            mode=ctx.cfg.mode,
            spec=lease.spec is not None,
        )
        log.info(
            "acquired run %s at epoch %d (ttl %gs, renew every %gs)",
            lease.run_id,
            lease.epoch,
            lease.ttl_s,
            lease.renew_interval_s,
        )
        if unsafe is not None:  # the timing rule (relay.worker.timing): hand it back, train nothing
            ctx.goto(S.RELEASING)
            detail = f"this worker refuses the lease: {unsafe}"
            return await self.handoff.release(ReleaseOutcome.preempted, EXIT_CONFIG, detail)
        try:
            resume = await ctx.guarded(self._recover())
        except Interrupted as exc:
            if exc.fenced:
                raise
            return await self.handoff.interrupted_before_training()
        except Exception as exc:
            return await self.handoff.recovery_failed(exc)
        result = await self.supervisor.run(resume)
        return await self.handoff.finish(result)

    async def _recover(self) -> CommittedCheckpoint | None:
        """RECOVERING: open the remote and claim it at this lease's epoch (no older epoch can publish
        from then on), then choose the checkpoint to resume from (relay.worker.recovery)."""
        ctx = self.ctx
        cfg = ctx.cfg
        if self.standby is not None:  # it must be off the volume before recovery reads it
            await self.standby.stop()
        claimed = None
        if cfg.remote:
            ctx.ckpts.open_remote(
                cfg.remote,
                ctx.lease.run_id,
                token=cfg.token(),
                remote_keep_last_n=cfg.remote_keep_last_n,
                loop=asyncio.get_running_loop(),
            )
            assert ctx.ckpts.remote is not None
            claimed = await claim_remote(ctx.ckpts.remote, ctx.lease, events=ctx.events)
        return await recover(ctx.layout, ctx.ckpts, events=ctx.events, claimed=claimed)

    async def _cleanup(self) -> None:
        ctx = self.ctx
        trainer = self.supervisor.trainer
        if trainer is not None and trainer.returncode is None:  # never leave a trainer behind
            trainer.kill_now(ctx.cfg.kill_grace_s)
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(trainer.wait(), timeout=ctx.cfg.kill_grace_s + 2)
        if trainer is not None:
            trainer.disarm_guard()
        await ctx.reporter.stop()
        await ctx.keeper.stop()
        ctx.ckpts.close()
        ctx.close()
        ctx.state_file.close()  # writes what is pending, then its thread ends
        ctx.events.close()
        ctx.tlog.close()
        if self._file_log is not None:
            logging.getLogger("relay").removeHandler(self._file_log)
            self._file_log.close()
        with contextlib.suppress(Exception):  # the last state.json lands before the worker may exit
            await in_thread(ctx.state_file.flush, STATE_FLUSH_S)


def _open_run_dir(cfg: WorkerConfig, lease: Lease) -> tuple[RunLayout, EventLog, TrainerLog]:
    """The run's directory on the volume, with its event log and trainer log open; a volume that filled
    up or went read-only since the preflight is a named VolumeError, not a traceback."""
    from relay.ckpt.layout import RunLayout

    layout = RunLayout(cfg.relay_root, lease.run_id)
    try:
        layout.ensure()
        events = EventLog(layout.events_file, lease)
        tlog = TrainerLog(layout.logs_dir, max_bytes=cfg.log_max_bytes, backups=cfg.log_backups)
    except OSError as exc:
        raise volume_error(cfg.relay_root, exc, f"creating the run's directory {layout.run_dir}") from None
    return layout, events, tlog
