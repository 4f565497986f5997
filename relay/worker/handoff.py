"""The end of a lease: commit the final checkpoint, wait for its upload as the outcome requires, release.

Whatever ended the supervision (:class:`~relay.worker.supervisor.SupervisorResult`), the handoff walks
FINALIZING -> RELEASING -> DONE and names the release outcome (:class:`relay.schema.ReleaseOutcome`):

- **completed**: the trainer finished; its final checkpoint is committed and its upload awaited for up
  to ``final_sync_timeout_s``;
- **preempted**: a signal (the checkpoint the trainer saved on SIGTERM is uploaded within what is left
  of ``grace_s``, so the next pod resumes from it), or a transient recovery failure another pod may
  not have;
- **cancelled**: the commander asked; nothing more is uploaded;
- **failed**: ``max_runtime_s``, a trainer that crashed or hung past its restart budget (with its last
  log lines), a launcher that cannot start, a failed recovery.

A fenced lease ends in :meth:`Handoff.fenced` instead: the trainer is dead (the fence's hook killed it),
nothing more is committed, uploaded or released, and the worker exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

from relay.backoff import Backoff
from relay.schema import ReleaseOutcome
from relay.worker.context import RunContext
from relay.worker.lifecycle import EXIT_FAILED, EXIT_FENCED, EXIT_OK, Outcome, State
from relay.worker.supervisor import Ending, Supervisor, SupervisorResult

log = logging.getLogger("relay.worker")
S = State
R = ReleaseOutcome

#: a release through a commander blip: a few quick tries, bounded by what is left of the lease
RELEASE_BACKOFF = Backoff(base_s=0.2, max_s=3.2, jitter=0.0)
RELEASE_ATTEMPTS = 5
#: how many of the trainer's last output lines a failure shows
FAILURE_TAIL_LINES = 40


class Handoff:
    """Finalizes and releases one lease (see the module docstring)."""

    def __init__(self, ctx: RunContext, supervisor: Supervisor) -> None:
        self.ctx = ctx
        self.supervisor = supervisor

    async def finish(self, result: SupervisorResult) -> Outcome:
        """FINALIZING (or RELEASING, for a launch failure) -> the release the result calls for."""
        ending = result.ending
        if ending is Ending.LAUNCH_FAILED:
            return await self.release(R.failed, EXIT_FAILED, result.detail)
        if ending is Ending.GAVE_UP:
            return await self._give_up(result)
        if ending is Ending.VOLUME:
            return await self._volume_failed(result)
        return await self._finalize(ending)

    async def _finalize(self, ending: Ending) -> Outcome:
        ctx = self.ctx
        await ctx.ckpts.commit_all_now()
        ctx.check_fence()
        latest_step = ctx.ckpts.latest.step if ctx.ckpts.latest is not None else None
        synced = True
        if latest_step is not None and ctx.ckpts.syncer is not None and ending is not Ending.CANCELLED:
            if ending is Ending.COMPLETED and not ctx.signals.stopping:
                timeout = ctx.cfg.final_sync_timeout_s
            else:
                timeout = self.supervisor.grace_left()
            synced = await self._wait_synced(latest_step, timeout)
            ctx.check_fence()
            if not synced:
                log.warning("checkpoint step %s was not synced before the release", latest_step)
        note = "" if synced else f"; checkpoint step {latest_step} NOT synced to the remote"
        step = ctx.progress.step
        if ending is Ending.COMPLETED:
            unfinished = self._not_completed(step, latest_step, synced)
            if unfinished is not None:  # "completed" promises a committed (and, with a remote, synced) end
                ctx.goto(S.RELEASING)
                # a trainer whose checkpoints can never be committed fails the same way on every pod
                again = not (ctx.ckpts.last_commit_invalid and latest_step != step)
                return await self.release(R.failed, EXIT_FAILED, unfinished, restartable=again)
            return await self._complete(step, note)
        ctx.goto(S.RELEASING)
        if ending is Ending.CANCELLED:
            return await self.release(R.cancelled, EXIT_OK, f"cancelled at step {step}")
        if ending is Ending.RUNTIME:
            detail = f"max_runtime_s ({ctx.cfg.max_runtime_s:g}s) reached at step {step}{note}"
            return await self.release(R.failed, EXIT_FAILED, detail)
        sig = ctx.signals.name or "stop"
        return await self.release(
            R.preempted, EXIT_OK, f"{sig} at step {step}, checkpoint {latest_step}{note}"
        )

    def _not_completed(self, step: int, latest_step: int | None, synced: bool) -> str | None:
        """Why a trainer that exited 0 cannot be released as completed: its final checkpoint (the step
        it last reported) is not committed, or not on the remote when there is one. None: it can."""
        ckpts = self.ctx.ckpts
        if latest_step is None or latest_step < step:
            why = ckpts.last_commit_error or "the trainer left no complete checkpoint of it"
            newest = f"step {latest_step}" if latest_step is not None else "none"
            return (
                f"the trainer finished at step {step} but its final checkpoint was not committed ({why}); "
                f"newest committed checkpoint: {newest}"
            )
        if not synced and ckpts.syncer is not None and ckpts.remote is not None:
            timeout = self.ctx.cfg.final_sync_timeout_s
            last = ckpts.syncer.last_error() or f"not within final_sync_timeout_s ({timeout:g}s)"
            return (
                f"the trainer finished at step {step} and its final checkpoint is committed on this volume, but it "
                f"is not on the remote {ckpts.remote.url} ({last})"
            )
        return None

    async def _complete(self, step: int, note: str) -> Outcome:
        """Completed only once the final export is on the remote (when there is one to publish)."""
        from relay.worker.final_export import publish_final

        final = await publish_final(self.ctx, step)
        self.ctx.check_fence()
        self.ctx.goto(S.RELEASING)
        if final.error is not None:
            detail = f"trainer finished at step {step} but {final.error}"
            return await self.release(R.failed, EXIT_FAILED, detail, restartable=True)
        extra = f"; {final.detail}" if final.detail else ""
        return await self.release(R.completed, EXIT_OK, f"trainer finished at step {step}{note}{extra}")

    async def _wait_synced(self, step: int, timeout_s: float | None) -> bool:
        """Wait until the remote holds ``step`` (True), the syncer gave up, the fence tripped, or time is up."""
        ctx = self.ctx
        syncer = ctx.ckpts.syncer
        if syncer is None:
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if ctx.signals.stopping and ctx.signals.at is not None:
                # a signal during a long final upload: what is left of grace_s bounds it
                cap = ctx.signals.at + ctx.cfg.grace_s
                deadline = cap if deadline is None else min(deadline, cap)
            synced = syncer.synced_step()
            if synced is not None and synced >= step:
                return True
            if ctx.fence.tripped or syncer.gave_up(step) or ctx.signals.force_requested.is_set():
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.sleep(0.02 if remaining is None else min(0.02, remaining))

    async def _give_up(self, result: SupervisorResult) -> Outcome:
        """A trainer that crashed or hung past its budget, or whose failure a restart cannot cure."""
        report, policy = result.report, result.policy
        assert report is not None and policy is not None
        tail = self.ctx.tlog.tail(FAILURE_TAIL_LINES)
        what = "CUDA out of memory" if report.oom else report.reason
        if not report.restartable:
            why = "not restarted"
        else:
            why = f"after {policy.restarts} restart(s) (max_restarts={policy.max_restarts})"
        shown = "\n".join(tail)[-3000:] if tail else "(the trainer printed nothing)"
        detail = f"trainer {what}; {why}. Its last output:\n{shown}"
        self.ctx.goto(S.RELEASING)
        return await self.release(
            R.failed,
            EXIT_FAILED,
            detail,
            restartable=report.restartable,
            exit_code=report.exit_code,
            oom=report.oom,
            log_tail=tail,
        )

    async def _volume_failed(self, result: SupervisorResult) -> Outcome:
        """The trainer crashed on a volume that is full or read-only: no restart here, another pod may."""
        assert result.report is not None
        tail = self.ctx.tlog.tail(FAILURE_TAIL_LINES)
        shown = "\n".join(tail)[-2000:] if tail else "(the trainer printed nothing)"
        detail = (
            f"{result.detail}: this pod cannot carry the run, so its trainer ({result.report.reason}) was not "
            f"restarted; released for another pod. Its last output:\n{shown}"
        )
        self.ctx.goto(S.RELEASING)
        return await self.release(
            R.failed, EXIT_FAILED, detail, exit_code=result.report.exit_code, log_tail=tail
        )

    async def interrupted_before_training(self) -> Outcome:
        """A signal or a cancel while recovering: release at once, nothing was trained."""
        ctx = self.ctx
        ctx.goto(S.RELEASING)
        if ctx.cancel_requested.is_set():
            return await self.release(R.cancelled, EXIT_OK, "cancelled before training started")
        return await self.release(R.preempted, EXIT_OK, f"{ctx.signals.name} before training started")

    async def recovery_failed(self, exc: Exception) -> Outcome:
        """RECOVERING failed: the remote is ahead of this lease's epoch (release so that the commander
        jumps past it), a transient problem another pod may not have (preempted), or a lasting one."""
        from relay.remote.errors import RemoteAheadError

        ctx = self.ctx
        ctx.goto(S.RELEASING)
        if isinstance(exc, RemoteAheadError):
            ctx.events.emit("remote_ahead", message=str(exc), remote_epoch=exc.remote_epoch)
            detail = (
                f"not trained: {exc}; released so that the next grant jumps past epoch {exc.remote_epoch}"
            )
            done = await self.release(R.preempted, EXIT_OK, detail, remote_epoch=exc.remote_epoch)
            done.remote_epoch = exc.remote_epoch
            return done
        detail = f"recovery failed: {type(exc).__name__}: {exc}"
        log.error("%s", detail)
        outcome = R.preempted if getattr(exc, "retryable", False) else R.failed
        return await self.release(outcome, EXIT_FAILED, detail)

    async def release(
        self,
        outcome: ReleaseOutcome,
        code: int,
        detail: str,
        *,
        restartable: bool = True,
        remote_epoch: int | None = None,
        **fields: Any,
    ) -> Outcome:
        """RELEASING: flush reports, stop renewing, hand the lease back with ``outcome``."""
        ctx = self.ctx
        await ctx.reporter.flush(timeout_s=min(2.0, max(0.2, ctx.keeper.remaining_s())))
        await ctx.reporter.stop()
        await ctx.keeper.stop()
        if ctx.fence.tripped:
            return await self.fenced()
        req = ctx.lease.release_request(
            outcome.value,
            detail,
            restartable=restartable,
            remote_epoch=remote_epoch,
            **ctx.progress.release_fields(),
        )
        started = time.monotonic()
        released, status = await self._send_release(req)
        latest = ctx.ckpts.latest
        first_line = detail.splitlines()[0] if detail else None
        ctx.events.emit(
            outcome.value,
            message=first_line,
            step=ctx.progress.step,
            checkpoint_step=latest.step if latest is not None else None,
            released=released,
            status=getattr(status, "value", status),
            release_s=round(time.monotonic() - started, 3),
            remote_epoch=remote_epoch,
            **fields,
        )
        ctx.write_state(state=S.DONE.value, outcome=outcome.value)  # this run is over for this worker
        print(f"relay worker: run {ctx.lease.run_id} {outcome.value}: {detail}", file=sys.stderr)
        return Outcome(outcome, code, detail, ctx.progress.step)

    async def _send_release(self, req: Any) -> tuple[bool, Any]:
        """(released, the run's status after it); a refusal or an unreachable commander is logged."""
        from relay.client import CommanderUnreachable, Fenced

        keeper = self.ctx.keeper
        for attempt in range(RELEASE_ATTEMPTS):
            try:
                resp = await self.ctx.client.release(req)
                return True, getattr(resp, "status", None)
            except Fenced as exc:
                log.error("release refused: %s (the lease had already ended)", exc)
                return False, None
            except CommanderUnreachable as exc:
                if keeper.remaining_s() <= 0 or attempt == RELEASE_ATTEMPTS - 1:
                    log.error("could not release (%s); the lease will expire on its own", exc)
                    return False, None
                await asyncio.sleep(RELEASE_BACKOFF.delay(attempt, at_most_s=max(0.05, keeper.remaining_s())))
        return False, None  # pragma: no cover

    async def fenced(self) -> Outcome:
        """FENCED: the trainer is (being) killed; commit, sync and release nothing more."""
        ctx = self.ctx
        reason = ctx.fence.reason or "fenced"
        if ctx.lifecycle.state is not S.FENCED:
            ctx.goto(S.FENCED)
        trainer = self.supervisor.trainer
        if trainer is not None and trainer.returncode is None:
            trainer.kill_now(ctx.cfg.kill_grace_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(trainer.proc.wait()), timeout=ctx.cfg.kill_grace_s + 2)
        ctx.events.emit("fenced", message=reason, step=ctx.progress.step)
        await ctx.reporter.stop()
        await ctx.keeper.stop()
        print(
            f"relay worker: FENCED on run {ctx.lease.run_id} (epoch {ctx.lease.epoch}): {reason}; the trainer "
            "was killed and nothing more is committed or synced",
            file=sys.stderr,
        )
        return Outcome(None, EXIT_FENCED, reason, ctx.progress.step)
