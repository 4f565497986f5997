"""The worker's side of background uploads: a :class:`relay.remote.sync.Syncer` wired to events and fencing.

The Syncer owns the uploads (one daemon thread, newest wins, retries with backoff).  This adapter
turns what it reports into the worker's vocabulary, on the worker's event loop:

- ``synced``  -> a ``checkpoint_synced`` event, and ``on_synced(step, revision)`` (the run's progress);
- ``failed``  -> a ``sync_failed`` event; a non-retryable failure means that step will never land;
- ``fenced``  -> the remote holds a newer epoch: trip the worker's fence (kill the trainer, stop).

It knows the event log and the fence, not the session that owns them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.ckpt.manifest import CommittedCheckpoint
    from relay.remote.base import Remote
    from relay.remote.sync import SyncEvent
    from relay.worker.events import EventLog
    from relay.worker.fence import Fence

log = logging.getLogger("relay.worker.sync")


class SyncPort:
    def __init__(
        self,
        remote: Remote,
        *,
        epoch: int,
        remote_keep_last_n: int | None,
        loop: asyncio.AbstractEventLoop,
        events: EventLog,
        fence: Fence,
        on_synced: Callable[[int | None, str | None], None],
    ) -> None:
        from relay.remote.sync import Syncer

        self.events = events
        self.fence = fence
        self.on_synced = on_synced
        self._submitted_at: dict[int, float] = {}
        self._gave_up: set[int] = set()
        self._seen: int | None = None  # the remote's step when recovery read it (this lease's claim)
        self.syncer = Syncer(
            remote,
            epoch=epoch,
            remote_keep_last_n=remote_keep_last_n,
            on_event=self._on_event,
            callback_loop=loop,
            base_delay_s=0.5,
            max_delay_s=30.0,
        ).start()

    def submit(self, ckpt: CommittedCheckpoint) -> bool:
        self._submitted_at.setdefault(ckpt.step, time.monotonic())
        return self.syncer.submit(ckpt)

    def remote_seen(self, step: int | None) -> None:
        """Recovery read the remote's step: it is what the remote holds until a push of ours lands."""
        self._seen = step
        self.on_synced(step, None)

    def synced_step(self) -> int | None:
        """The newest step the remote holds for this run as far as this lease knows: what it pushed, or
        what was there at its claim (a run resumed at its final step has that step on the remote already;
        recovery pushes only a local step newer than the remote's)."""
        pushed = self.syncer.last_synced_step
        if pushed is None or (self._seen is not None and self._seen > pushed):
            return self._seen
        return pushed

    def last_error(self) -> str | None:
        """Why the last upload attempt failed (None after a success)."""
        return self.syncer.last_error

    def gave_up(self, step: int) -> bool:
        """True when ``step`` (or anything newer) can no longer be expected on the remote."""
        if self.syncer.fenced:
            return True
        status = self.syncer.status()
        busy = status.pending_step is not None or status.in_flight_step is not None
        return any(s >= step for s in self._gave_up) and not busy

    def stop_now(self) -> None:
        """Fenced: push nothing more (an upload already in flight cannot be recalled; the remote's
        epoch check refuses it if a newer holder published since)."""
        self.syncer.stop(drain=False, timeout_s=0)

    def close(self) -> None:
        self.syncer.stop(drain=False, timeout_s=0)

    def _on_event(self, ev: SyncEvent) -> None:
        if ev.kind == "synced":
            res = ev.result
            started = self._submitted_at.pop(ev.step, None)
            revision = getattr(res, "revision", None)
            self.on_synced(ev.step, revision)  # before the event: the report it triggers carries the step
            self.events.emit(
                "checkpoint_synced",
                step=ev.step,
                revision=revision,
                bytes_sent=getattr(res, "bytes_sent", None),
                files_sent=getattr(res, "files_sent", None),
                files_skipped=getattr(res, "files_skipped", None),
                noop=getattr(res, "noop", False) or None,
                attempt=ev.attempt,
                upload_s=round(time.monotonic() - started, 3) if started is not None else None,
            )
        elif ev.kind == "failed":
            if not ev.retryable and ev.phase == "push" and ev.step is not None:
                self._gave_up.add(ev.step)
            self.events.emit(
                "sync_failed",
                message=ev.error,
                step=ev.step,
                phase=ev.phase,
                attempt=ev.attempt,
                retryable=ev.retryable,
                retry_in_s=ev.retry_in_s,
            )
        elif ev.kind == "fenced":
            self.fence.trip(f"the remote refused our push as stale: {ev.error}")
