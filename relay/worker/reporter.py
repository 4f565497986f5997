"""Best-effort progress reports to the commander: step, metrics, checkpoints, events, log lines.

Reports are how ``relayctl status`` and the run's timeline learn what a pod is doing, but training
never depends on them: a report that fails is retried on the next tick, a report the commander
refuses as malformed is dropped, and only a 409 (this lease is no longer current) matters, because
it means another epoch owns the run, so it fences the worker.

Events go out one per report, oldest first, as soon as they are emitted (the reporter is woken),
and are acknowledged in the :class:`~relay.worker.events.EventLog` only once the commander took
them.  ``acquired``, the release outcomes and ``fenced`` are not reported: the commander records
the first two itself from the lease calls, and a fenced worker's reports would be refused anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from relay.backoff import Backoff
from relay.eventnames import REPORTED_EVENTS, WORKER_EVENTS
from relay.worker.events import EventLog, describe
from relay.worker.fence import Fence
from relay.worker.lease import Lease
from relay.worker.progress import RunProgress
from relay.worker.trainer_log import TrainerLog

log = logging.getLogger("relay.worker.reporter")

NOT_REPORTED = WORKER_EVENTS - REPORTED_EVENTS  # the lease events: the commander records its own
_MAX_LOG_LINES = 200
#: retries of a flush before a release: quick, a release is waiting
FLUSH_BACKOFF = Backoff(base_s=0.05, max_s=0.5, jitter=0.0)


def event_message(record: dict[str, Any]) -> str:
    """An event's fields as one short line for the commander's timeline."""
    return describe(record)


class Reporter:
    """Sends reports every ``interval_s`` and whenever an event is emitted; reads :class:`RunProgress`."""

    def __init__(
        self,
        client: Any,
        lease: Lease,
        *,
        progress: RunProgress,
        events: EventLog,
        trainer_log: TrainerLog,
        fence: Fence,
        interval_s: float,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.client = client
        self.lease = lease
        self.progress = progress
        self.events = events
        self.trainer_log = trainer_log
        self.fence = fence
        self.interval_s = interval_s
        self.request_timeout_s = request_timeout_s
        self.sent = 0
        self.failures = 0
        self._log_seq = 0
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        events.add_listener(lambda _record: self.wake())

    def wake(self) -> None:
        """Send soon (thread-safe: events are emitted from the syncer's thread too)."""
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def flush(self, timeout_s: float) -> bool:
        """Send queued events, the latest step and checkpoint, and new log lines now, retrying until the
        commander took them or ``timeout_s`` runs out (before a release). True when everything went out.

        Retried, not tried once: a run that completes during a commander blip must not be released with
        the commander still showing its previous checkpoint (found by the chaos soak)."""
        deadline = time.monotonic() + max(0.05, timeout_s)
        attempt = 0
        while not self.fence.tripped:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if await asyncio.wait_for(self._send_all(), timeout=remaining):
                    return True
            except asyncio.TimeoutError:
                return False
            await asyncio.sleep(FLUSH_BACKOFF.delay(attempt, at_most_s=max(0.0, deadline - time.monotonic())))
            attempt += 1
        return False

    async def _run(self) -> None:
        while not self.fence.tripped:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            self._wake.clear()
            if self.fence.tripped:
                return
            await self._send_all()

    async def _send_all(self) -> bool:
        """One pass over what is queued; True when the commander took all of it."""
        async with self._lock:
            # events first, one report each (each also carries step, metrics and new log lines)
            sent = False
            while not self.fence.tripped:
                record = self.events.take_pending()
                if record is None:
                    break
                if record["event"] in NOT_REPORTED:
                    self.events.ack(record)
                    continue
                if not await self._send(record):
                    return False
                self.events.ack(record)
                sent = True
            if self.fence.tripped:
                return False
            if not sent or self.trainer_log.last_seq > self._log_seq:
                return await self._send(None)
            return True

    def _request(self, record: dict[str, Any] | None) -> Any:
        from relay.schema import LogLine, ReportRequest

        lines = self.trainer_log.since(self._log_seq, limit=_MAX_LOG_LINES)
        progress = self.progress
        step = progress.step
        if record is not None and isinstance(record.get("step"), int):
            step = max(step, record["step"])
        req = ReportRequest(
            **self.lease.report_fields(),
            step=max(0, int(step)),
            metrics=dict(progress.metrics) if progress.metrics else None,
            checkpoint=progress.checkpoint_ref(),
            remote_step=progress.remote_step,
            event=record["event"] if record is not None else None,
            message=event_message(record) if record is not None else None,
            log_tail=[LogLine(ts=e.ts, stream=e.stream, line=e.line[:16000]) for e in lines] or None,
        )
        return req, (lines[-1].seq if lines else None)

    async def _send(self, record: dict[str, Any] | None) -> bool:
        """One report; True when the commander took it (or refused it for good)."""
        from relay.client import BadRequest, CommanderError, Fenced

        try:
            req, last_seq = self._request(record)
        except Exception as exc:  # a malformed local value must not stop the reports
            log.warning("could not build a report: %s", exc)
            return True
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.client.report(self.lease.run_id, req), timeout=self.request_timeout_s)
        except Fenced as exc:
            self.fence.trip(f"the commander refused a progress report: {exc}")
            return False
        except BadRequest as exc:
            log.warning("the commander refused a report as malformed (dropped): %s", exc)
            if last_seq is not None:
                self._log_seq = last_seq
            return True
        except (CommanderError, asyncio.TimeoutError, OSError) as exc:
            self.failures += 1
            log.info("report failed after %.1fs (will retry): %s", time.monotonic() - started, exc)
            return False
        self.sent += 1
        if last_seq is not None:
            self._log_seq = last_seq
        return True
