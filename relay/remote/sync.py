"""Background uploads: the worker hands over a committed checkpoint and goes on; the Syncer pushes it.

One daemon thread owns every push of a run, so uploads never run on the worker's asyncio loop and
never overlap. ``submit`` only swaps a pending slot under a short lock (newest wins: an older,
not-yet-started checkpoint is dropped when a newer one arrives), so it never blocks its caller.

Failures: a retryable RemoteError (429, 5xx, network) or an unexpected exception is retried with
exponential backoff and jitter (honouring ``Retry-After``), until it succeeds or a newer
checkpoint supersedes it. A non-retryable error drops that checkpoint (the next one is tried). A
RemoteFencedError stops the Syncer for good: the worker must treat itself as fenced off. An upload
interrupted by a crash is completed by the next sync: the next process submits the local latest
again (``submit_latest``), and both backends skip what already landed (LFS blobs the Hub holds,
files a filesystem push already staged).

Callbacks (``on_event``) run on the Syncer thread, or on ``callback_loop`` via
``call_soon_threadsafe`` when given (for an asyncio worker); they must not block.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from relay.ckpt.errors import CheckpointError
from relay.ckpt.layout import RunLayout
from relay.ckpt.manifest import CommittedCheckpoint
from relay.remote.base import PushResult, Remote, RemoteError, RemoteFencedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncEvent:
    kind: Literal["synced", "failed", "fenced"]
    step: int | None
    attempt: int = 0
    result: PushResult | None = None
    error: str | None = None
    retryable: bool | None = None
    retry_in_s: float | None = None  # when the next attempt starts (failed + retryable)
    phase: Literal["push", "prune"] = "push"


@dataclass(frozen=True)
class SyncStatus:
    last_synced_step: int | None
    last_synced_revision: str | None
    last_error: str | None
    pending_step: int | None
    in_flight_step: int | None
    fenced: bool
    consecutive_failures: int


class Syncer:
    def __init__(
        self,
        remote: Remote,
        *,
        epoch: int,
        remote_keep_last_n: int | None = None,
        on_event: Callable[[SyncEvent], None] | None = None,
        callback_loop: asyncio.AbstractEventLoop | None = None,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        jitter: float = 0.2,
        max_attempts: int | None = None,
        name: str = "relay-syncer",
    ) -> None:
        self.remote = remote
        self.epoch = epoch
        self.remote_keep_last_n = remote_keep_last_n
        self.on_event = on_event
        self.callback_loop = callback_loop
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.jitter = jitter
        self.max_attempts = max_attempts
        self._cond = threading.Condition()
        self._pending: CommittedCheckpoint | None = None
        self._in_flight: CommittedCheckpoint | None = None
        self._stopping = False
        self._drain = False
        self._fenced = False
        self._last_synced_step: int | None = None
        self._last_synced_revision: str | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    # -- caller side (never blocks) --------------------------------------------------------------
    def start(self) -> Syncer:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def submit(self, ckpt: CommittedCheckpoint) -> bool:
        """Queue ``ckpt`` for upload (newest wins). False when ignored: fenced, stopping, or not newer
        than what is already synced or pending."""
        with self._cond:
            if self._fenced or self._stopping:
                return False
            if self._last_synced_step is not None and ckpt.step <= self._last_synced_step:
                return False
            if self._pending is not None and ckpt.step < self._pending.step:
                return False
            self._pending = ckpt
            self._cond.notify_all()
            return True

    def submit_latest(self, layout: RunLayout) -> bool:
        """Queue the checkpoint ``layout``'s ``latest`` names (after a restart: finishes an upload the
        previous process did not). Reads one manifest; no hashing."""
        from relay.ckpt.verify import latest_committed

        ckpt = latest_committed(layout)
        return False if ckpt is None else self.submit(ckpt)

    def status(self) -> SyncStatus:
        with self._cond:
            return SyncStatus(
                last_synced_step=self._last_synced_step,
                last_synced_revision=self._last_synced_revision,
                last_error=self._last_error,
                pending_step=None if self._pending is None else self._pending.step,
                in_flight_step=None if self._in_flight is None else self._in_flight.step,
                fenced=self._fenced,
                consecutive_failures=self._failures,
            )

    @property
    def last_synced_step(self) -> int | None:
        return self._last_synced_step

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def fenced(self) -> bool:
        return self._fenced

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until nothing is pending or in flight (or fenced). For shutdown paths and tests --
        from asyncio, call it through ``asyncio.to_thread``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._fenced and (self._pending is not None or self._in_flight is not None):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self, *, drain: bool = False, timeout_s: float | None = 30.0) -> bool:
        """Stop the thread. ``drain=True`` first finishes the pending upload (retrying) until
        ``timeout_s``. Returns True when the thread ended."""
        with self._cond:
            self._stopping = True
            self._drain = drain
            self._cond.notify_all()
        if self._started:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    # -- syncer thread ---------------------------------------------------------------------------
    def _emit(self, event: SyncEvent) -> None:
        cb = self.on_event
        if cb is None:
            return
        if self.callback_loop is not None:
            try:
                self.callback_loop.call_soon_threadsafe(cb, event)
            except RuntimeError:  # loop closed
                pass
            return
        try:
            cb(event)
        except Exception:  # noqa: BLE001 - a broken callback must not kill uploads
            log.exception("sync callback failed")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        delay += random.uniform(0, self.jitter * delay)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay_s))
        return delay

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._pending is None or self._fenced):
                    self._cond.wait()
                if self._fenced or self._pending is None or (self._stopping and not self._drain):
                    return
                ckpt, self._pending = self._pending, None
                self._in_flight = ckpt
            try:
                self._push_with_retries(ckpt)
            finally:
                with self._cond:
                    self._in_flight = None
                    self._cond.notify_all()

    def _push_with_retries(self, ckpt: CommittedCheckpoint) -> None:
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                result = self.remote.push(ckpt, epoch=self.epoch)
            except RemoteFencedError as exc:
                self._fenced_by(exc, ckpt.step, attempt)
                return
            except RemoteError as exc:
                error, retryable, retry_after = str(exc), exc.retryable, exc.retry_after_s
            except CheckpointError as exc:
                error, retryable = str(exc), False
            except Exception as exc:  # noqa: BLE001 - unknown failures are retried, never fatal
                error, retryable = f"{type(exc).__name__}: {exc}", True
            else:
                self._synced(result, attempt)
                return
            if not self._failed(ckpt, attempt, error, retryable, retry_after):
                return

    def _fenced_by(
        self, exc: RemoteFencedError, step: int | None, attempt: int, phase: Literal["push", "prune"] = "push"
    ) -> None:
        """The remote holds a newer epoch: this syncer (and its worker) is fenced off for good."""
        with self._cond:
            self._fenced = True
            self._last_error = str(exc)
            self._pending = None
        log.error("sync fenced: %s", exc)
        self._emit(SyncEvent("fenced", step, attempt, error=str(exc), retryable=False, phase=phase))

    def _synced(self, result: PushResult, attempt: int) -> None:
        with self._cond:
            self._failures = 0
            self._last_error = None
            if self._last_synced_step is None or result.step >= self._last_synced_step:
                self._last_synced_step = result.step
                self._last_synced_revision = result.revision
        log.info(
            "synced step %d to %s (%d bytes sent, %d files reused)%s",
            result.step,
            getattr(self.remote, "url", "remote"),
            result.bytes_sent,
            result.files_skipped,
            f" [no-op: {result.detail}]" if result.noop else "",
        )
        self._emit(SyncEvent("synced", result.step, attempt, result=result))
        self._prune(result.step)

    def _failed(
        self, ckpt: CommittedCheckpoint, attempt: int, error: str, retryable: bool, retry_after: float | None
    ) -> bool:
        """A failed push: say so, and wait out the backoff. True to try the same checkpoint again."""
        with self._cond:
            self._failures += 1
            self._last_error = error
            newer = self._pending is not None and self._pending.step > ckpt.step
            stopping = self._stopping and not self._drain
        out_of_attempts = self.max_attempts is not None and attempt >= self.max_attempts
        give_up = not retryable or newer or stopping or out_of_attempts
        delay = None if give_up else self._backoff(attempt, retry_after)
        log.warning(
            "sync of step %d failed (attempt %d): %s%s",
            ckpt.step,
            attempt,
            error,
            f"; retrying in {delay:.1f}s" if delay is not None else "",
        )
        self._emit(
            SyncEvent("failed", ckpt.step, attempt, error=error, retryable=retryable, retry_in_s=delay)
        )
        if give_up:
            return False
        with self._cond:
            deadline = time.monotonic() + (delay or 0)
            while not (self._stopping and not self._drain):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._stopping and not self._drain:
                return False
            # a newer checkpoint arrived during the backoff: upload that one instead
            return not (self._pending is not None and self._pending.step > ckpt.step)

    def _prune(self, step: int) -> None:
        if not self.remote_keep_last_n:
            return
        try:
            self.remote.prune(self.remote_keep_last_n, epoch=self.epoch)
        except RemoteFencedError as exc:  # a newer lease claimed the remote meanwhile: we are fenced
            self._fenced_by(exc, step, 1, phase="prune")
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping; the next sync tries again
            log.warning("remote prune failed: %s", exc)
            self._emit(SyncEvent("failed", step, 1, error=str(exc), retryable=True, phase="prune"))
