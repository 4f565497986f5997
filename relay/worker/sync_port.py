"""The worker's side of background uploads: a :class:`relay.remote.sync.Syncer` wired to events and fencing.

The Syncer owns the uploads (one daemon thread, newest wins, retries with backoff).  This adapter
turns what it reports into the worker's vocabulary, on the worker's event loop:

- ``synced``  -> a ``checkpoint_synced`` event, and the remote step in the next report;
- ``failed``  -> a ``sync_failed`` event; a non-retryable failure means that step will never land;
- ``fenced``  -> the remote holds a newer epoch: trip the worker's fence (kill the trainer, stop).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("relay.worker.sync")


class SyncPort:
    def __init__(self, session: Any) -> None:
        from relay.remote.sync import Syncer

        self.session = session
        self._submitted_at: dict[int, float] = {}
        self._gave_up: set[int] = set()
        self.syncer = Syncer(
            session.remote,
            epoch=session.epoch,
            remote_keep_last_n=session.cfg.remote_keep_last_n,
            on_event=self._on_event,
            callback_loop=session.loop,
            base_delay_s=0.5,
            max_delay_s=30.0,
        ).start()

    def submit(self, ckpt: Any) -> bool:
        self._submitted_at.setdefault(ckpt.step, time.monotonic())
        return self.syncer.submit(ckpt)

    def synced_step(self) -> int | None:
        return self.syncer.last_synced_step

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

    def _on_event(self, ev: Any) -> None:
        s = self.session
        if ev.kind == "synced":
            res = ev.result
            started = self._submitted_at.pop(ev.step, None)
            revision = getattr(res, "revision", None)
            s.reporter.remote_step = ev.step
            if s.reporter.checkpoint is not None and s.reporter.checkpoint[0] == ev.step:
                s.reporter.checkpoint = (ev.step, s.reporter.checkpoint[1], revision)
            s.events.emit(
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
            s.events.emit(
                "sync_failed",
                message=ev.error,
                step=ev.step,
                phase=ev.phase,
                attempt=ev.attempt,
                retryable=ev.retryable,
                retry_in_s=ev.retry_in_s,
            )
        elif ev.kind == "fenced":
            s.fence.trip(f"the remote refused our push as stale: {ev.error}")
