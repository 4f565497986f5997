"""One lease's checkpoints: commit what the trainer staged, remember the newest, hand it to the syncer.

Commits run in a daemon thread (hashing and fsync are slow) and the supervisor loop only *kicks* a
commit pass, never awaits one, so lease renewal never waits on a disk.  Each pass commits the newest
complete staged checkpoint; older complete ones staged in the same poll are superseded (discarded by
:func:`relay.ckpt.commit.commit_newest_staged`).  Once the fence trips, nothing more is committed
or handed on: a commit that finishes while being fenced stays on the volume and goes nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from typing import TYPE_CHECKING

from relay.worker.threads import in_thread

if TYPE_CHECKING:
    from relay.ckpt.layout import RunLayout
    from relay.ckpt.manifest import CommittedCheckpoint
    from relay.remote.base import Remote
    from relay.worker.events import EventLog
    from relay.worker.fence import Fence
    from relay.worker.progress import RunProgress
    from relay.worker.sync_port import SyncPort
    from relay.worker.trainer_log import TrainerLog

log = logging.getLogger("relay.worker")


class Checkpoints:
    """The run's committed checkpoints as this lease sees them, and their way to the remote."""

    def __init__(
        self,
        layout: RunLayout,
        *,
        epoch: int,
        keep_last_n: int,
        fence: Fence,
        events: EventLog,
        tlog: TrainerLog,
        progress: RunProgress,
    ) -> None:
        self.layout = layout
        self.epoch = epoch
        self.keep_last_n = keep_last_n
        self.fence = fence
        self.events = events
        self.tlog = tlog
        self.progress = progress  # this class writes its ``checkpoint``; the sync port its remote step
        self.remote: Remote | None = None
        self.syncer: SyncPort | None = None
        self.latest: CommittedCheckpoint | None = None  # newest CommittedCheckpoint on the volume
        self.last_commit_error: str | None = None  # why the last commit failed (None once one succeeds)
        #: the last failure was the trainer's output itself (InvalidStagedCheckpoint): no pod can do better
        self.last_commit_invalid = False
        self._commit_task: asyncio.Task[None] | None = None

    def open_remote(
        self,
        url: str,
        run_id: str,
        *,
        token: str | None,
        remote_keep_last_n: int | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        from relay.remote import open_remote
        from relay.worker.sync_port import SyncPort

        self.remote = open_remote(url, run_id, token=token)
        self.syncer = SyncPort(
            self.remote,
            epoch=self.epoch,
            remote_keep_last_n=remote_keep_last_n,
            loop=loop,
            events=self.events,
            fence=self.fence,
            on_synced=self.progress.synced,
        )

    def adopt(self, ckpt: CommittedCheckpoint) -> None:
        """``ckpt`` is now the newest checkpoint on the volume (committed here, or recovered)."""
        self.latest = ckpt
        self.progress.committed(ckpt.step, str(ckpt.path))

    # -- commits --------------------------------------------------------------------------------

    def kick(self) -> None:
        """Start a commit pass unless one is running (never awaited by the supervisor loop)."""
        task = self._commit_task
        if task is not None and not task.done():
            return
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("commit pass failed: %s", task.exception())
        if self.fence.tripped:
            return
        self._commit_task = asyncio.ensure_future(self.commit_ready())

    async def commit_all_now(self) -> None:
        """Finish the running commit pass, then one more (the final checkpoint)."""
        if self._commit_task is not None and not self._commit_task.done():
            with contextlib.suppress(Exception):
                await self._commit_task
        await self.commit_ready()

    async def commit_ready(self, *, sync: bool = True) -> None:
        """Commit the newest complete staged checkpoint (older complete ones are superseded) and sync it
        (unless ``sync`` is False: recovery decides what to push once it knows the remote's step)."""
        from relay.ckpt.commit import commit_newest_staged
        from relay.ckpt.errors import CheckpointError, InvalidStagedCheckpoint, StaleStagedCheckpoint

        if self.fence.tripped:
            return
        started = time.monotonic()
        try:
            ckpt = await in_thread(
                commit_newest_staged, self.layout, epoch=self.epoch, keep_last_n=self.keep_last_n
            )
        except StaleStagedCheckpoint as exc:
            log.warning("%s", exc)
            return
        except CheckpointError as exc:
            self.last_commit_invalid = isinstance(exc, InvalidStagedCheckpoint)
            self._commit_failed(str(exc))
            return
        if ckpt is None:
            return
        if self.fence.tripped:
            return  # committed while being fenced: it stays on the volume, nothing is handed on
        self.last_commit_error = None
        self.adopt(ckpt)
        self.events.emit(
            "checkpoint_committed",
            step=ckpt.step,
            path=str(ckpt.path),
            bytes=ckpt.total_bytes,
            commit_s=round(time.monotonic() - started, 3),
        )
        if sync and self.syncer is not None:
            self.syncer.submit(ckpt)

    def _commit_failed(self, error: str) -> None:
        """A commit failed: a ``checkpoint_commit_failed`` event (the timeline and ``relayctl status``) and a
        note in the trainer's log (``relayctl logs``), once per distinct failure (a staged checkpoint
        that keeps failing is retried every poll)."""
        if error == self.last_commit_error:
            return
        self.last_commit_error = error
        log.error("checkpoint commit failed: %s", error)
        self.tlog.note(f"checkpoint commit failed: {error}")
        newest = self.latest.step if self.latest is not None else None
        self.events.emit(
            "checkpoint_commit_failed", message=error, step=self.progress.step, committed_step=newest
        )

    def clear_staging(self) -> None:
        """Remove what a dead trainer left half-written, so the next one cannot trip over it: the staging
        directory and the final-export directory (only a trainer that finishes fills it)."""
        for where in (self.layout.staging_dir, self.layout.final_dir):
            if not where.is_dir():
                continue
            for entry in where.iterdir():
                with contextlib.suppress(OSError):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()

    # -- sync -----------------------------------------------------------------------------------

    def stop_syncer_now(self) -> None:
        """The fence hook: push nothing more."""
        if self.syncer is not None:
            with contextlib.suppress(Exception):
                self.syncer.stop_now()

    def close(self) -> None:
        """End of the lease: abandon a running commit pass and stop the syncer."""
        if self._commit_task is not None and not self._commit_task.done():
            self._commit_task.cancel()
        if self.syncer is not None:
            with contextlib.suppress(Exception):
                self.syncer.close()
