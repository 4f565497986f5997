"""Run callbacks: a durable outbox in the commander's SQLite state, delivered in the background.

A backend that submitted a run with ``callbacks: {webhook_url, auth_header, events}`` hears
of it without polling.  The commander POSTs a :class:`~relay.schema.CallbackPayload`

* on every status change (pending, running, preempted, completed, failed, cancelled),
* when a worker reports ``checkpoint_synced``,
* as a ``heartbeat`` every ``RELAY_CALLBACK_INTERVAL_S`` (default 60) while the run is running
  (delivery settings: ``relay.commander.config.CallbackSettings``).

Why an outbox: the callback row is written by the lease manager *in the transaction of the
change it reports* (``Store.save_run(outbox=...)``), so a change is never on disk without its
callback, nor a callback without its change, and a ``kill -9`` loses neither.  Delivery is this
module's background task, never the lease call's: a slow or dead receiver cannot delay a grant
or a renewal.  Deliveries are at least once (a crash between the POST and the bookkeeping sends
again); the ``X-Relay-Delivery`` header carries a stable id to de-duplicate on.

Order and retries: each run's callbacks go out in order, one at a time (a receiver never sees
``completed`` before ``running``); different runs are delivered concurrently.  Any answer but a
2xx, a timeout or a connection error is retried with exponential backoff and jitter, up to
``RELAY_CALLBACK_MAX_ATTEMPTS`` attempts, then dropped and counted.  Redirects are not followed.
Waiting heartbeats are replaced by newer ones instead of piling up.  After a commander restart
every waiting delivery is tried again at once.

The auth header: written ``Name: value`` (Name an HTTP header token) it is sent as that header;
anything else (``Bearer abc``) is sent as the ``Authorization`` value.  It lives only in the
stored spec; the API shows it as ``***`` and nothing here logs it, nor an error that quotes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from relay import __version__
from relay.commander.config import CallbackSettings
from relay.commander.leases import LeaseManager
from relay.commander.store import DeliveryRow, NewDelivery, RunRow, Store
from relay.schema import CallbackEvent, CallbackPayload, CallbackSpec, CallbackStatus, RunSpec, RunStatus

log = logging.getLogger("relay.commander.callbacks")

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def auth_header_pair(value: str) -> tuple[str, str]:
    """``"X-Api-Key: abc"`` -> ("X-Api-Key", "abc"); anything else -> ("Authorization", value)."""
    name, sep, rest = value.partition(":")
    if sep and _TOKEN.fullmatch(name) and rest.strip():
        return name, rest.strip()
    return "Authorization", value


def _where(url: str) -> str:
    """scheme://host[:port] of a webhook URL: enough to say where, never a token in its path or query."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "(unparseable URL)"


class CallbackDispatcher:
    """Builds callback rows for the lease manager and delivers the outbox in the background."""

    def __init__(
        self,
        store: Store,
        settings: CallbackSettings | None = None,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings or CallbackSettings()
        self.wall = wall
        self.monotonic = monotonic
        self.delivered = 0
        self.failed_attempts = 0
        self.dropped = 0
        self._specs: dict[str, CallbackSpec | None] = {}
        self._last_queued: dict[str, float] = {}  # run -> monotonic time of its last queued callback
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None

    def attach(self, leases: LeaseManager) -> None:
        """Make the lease manager queue this dispatcher's callbacks with its status changes."""
        leases.callback_outbox = self.outbox

    # ------------------------------------------------------------------ building (called by the lease manager)

    def callback_spec(self, row: RunRow) -> CallbackSpec | None:
        """The run's callback settings (cached: a run's spec never changes once submitted)."""
        if row.run_id not in self._specs:
            spec = RunSpec.model_validate_json(row.spec_json) if row.spec_json else None
            self._specs[row.run_id] = spec.callbacks if spec is not None else None
        return self._specs[row.run_id]

    def outbox(
        self, row: RunRow, event: CallbackEvent, metrics: dict[str, float] | None = None
    ) -> list[NewDelivery]:
        """The callback rows to write with a change of ``row`` (none when the run has no callbacks)."""
        delivery = self._build(row, event, metrics)
        if delivery is None:
            return []
        self._wake_soon()
        return [delivery]

    def _build(
        self, row: RunRow, event: CallbackEvent, metrics: dict[str, float] | None
    ) -> NewDelivery | None:
        spec = self.callback_spec(row)
        self._last_queued[row.run_id] = self.monotonic()
        if spec is None or (spec.events is not None and event not in spec.events):
            return None
        now = self.wall()
        payload = CallbackPayload(
            run_id=row.run_id,
            event=event,
            status=row.status,
            epoch=row.epoch,
            step=row.step,
            detail=row.detail,
            metrics=metrics if metrics is not None else self.store.latest_metrics(row.run_id),
            latest_checkpoint=row.latest_checkpoint,
            remote_step=row.remote_step,
            restarts=row.restarts,
            timestamp=now,
        )
        return NewDelivery(event.value, payload.model_dump_json(), now)

    def status(self, row: RunRow) -> CallbackStatus | None:
        """The run's delivery state for its detail view (None: the run has no callbacks)."""
        spec = self.callback_spec(row)
        if spec is None:
            return None
        state = self.store.callback_state(row.run_id)
        return CallbackStatus(
            webhook_url=spec.webhook_url,
            pending=state.pending,
            delivered=state.delivered,
            dropped=state.dropped,
            last_attempt_at=state.last_attempt_at,
            last_delivery_at=state.last_delivery_at,
            last_status=state.last_status,
            last_error=state.last_error,
            next_attempt_at=state.next_attempt_at,
        )

    # ------------------------------------------------------------------ background tasks

    async def cleanup_ctx(self, app: Any) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: deliver and heartbeat while the app runs; waiting rows stay for the next start."""
        self._wake = asyncio.Event()
        self.store.retry_deliveries_now(self.wall())
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=self.settings.concurrency),
            headers={"User-Agent": f"relay-commander/{__version__}"},
            trust_env=False,
        )
        loops = [asyncio.create_task(self._heartbeat_loop())]
        if self.settings.deliver:
            loops.append(asyncio.create_task(self._deliver_loop()))
        else:
            log.warning(
                "callback delivery is paused (RELAY_CALLBACK_DELIVER=0): callbacks are queued, not sent"
            )
        try:
            yield
        finally:
            for task in [*loops, *self._tasks]:
                task.cancel()
            for task in [*loops, *self._tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._session.close()
            self._session = None

    def _wake_soon(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _deliver_loop(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                # Read the outbox only once the changes that queued it are committed: never announce
                # a change that a failed commit rolled back.
                await self.store.committed()
                self._start_due()
                next_at = self.store.next_delivery_at(self._inflight)
            except Exception:  # a store error: the store recovers on its own; try again shortly
                log.exception("callback delivery loop error; retrying")
                next_at = None
            wait = 5.0 if next_at is None else min(5.0, max(0.01, next_at - self.wall()))
            # Not asyncio.wait_for: on Python < 3.12 it can swallow a cancel that races the wake-up,
            # which would leave this loop running through the app's shutdown.
            timer = asyncio.get_running_loop().call_later(wait, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _start_due(self) -> None:
        room = self.settings.concurrency - len(self._inflight)
        if room <= 0:
            return
        for delivery in self.store.due_deliveries(self.wall(), room, self._inflight):
            self._inflight.add(delivery.run_id)
            task = asyncio.create_task(self._attempt(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attempt(self, delivery: DeliveryRow) -> None:
        try:
            row = self.store.get_run(delivery.run_id)
            spec = self.callback_spec(row) if row is not None else None
            if spec is None:  # cannot happen for rows the lease manager queued; never retry it
                self.store.delivery_failed(delivery, self.wall(), None, "the run has no callbacks", None)
                return
            http_status, error = await self._post(spec, delivery)
            now = self.wall()
            if error is None:
                self.delivered += 1
                self.store.delivery_succeeded(delivery, now, http_status or 0)
                return
            self.failed_attempts += 1
            attempts = delivery.attempts + 1
            retry_at = None
            if attempts < self.settings.max_attempts:
                delay = min(self.settings.backoff_max_s, self.settings.backoff_s * 2 ** (attempts - 1))
                retry_at = now + random.uniform(delay / 2, delay)
                log.warning(
                    "callback %s of run %s to %s failed (attempt %d of %d): %s; retrying in %.1fs",
                    delivery.event,
                    delivery.run_id,
                    _where(spec.webhook_url),
                    attempts,
                    self.settings.max_attempts,
                    error,
                    retry_at - now,
                )
            else:
                self.dropped += 1
                log.error(
                    "callback %s of run %s to %s dropped after %d attempts: %s",
                    delivery.event,
                    delivery.run_id,
                    _where(spec.webhook_url),
                    attempts,
                    error,
                )
            self.store.delivery_failed(delivery, now, http_status, error, retry_at)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("callback delivery of run %s failed unexpectedly", delivery.run_id)
        finally:
            self._inflight.discard(delivery.run_id)
            self._wake_soon()  # the run's next callback, if any, may go now

    async def _post(self, spec: CallbackSpec, delivery: DeliveryRow) -> tuple[int | None, str | None]:
        """One POST: (HTTP status, None) on a 2xx, else (status or None, a one-line error without secrets)."""
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            "X-Relay-Delivery": str(delivery.id),
            "X-Relay-Event": delivery.event,
        }
        secret = None
        if spec.auth_header:
            name, secret = auth_header_pair(spec.auth_header)
            headers[name] = secret
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        status: int | None = None
        try:
            async with self._session.post(
                spec.webhook_url,
                data=delivery.payload.encode(),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                with contextlib.suppress(Exception):
                    await resp.content.read(4096)
            if 200 <= status < 300:
                return status, None
            error = f"HTTP {status}"
        except asyncio.TimeoutError:
            error = f"no answer within {self.settings.timeout_s:g}s"
        except aiohttp.ClientConnectorError as exc:
            error = f"cannot connect: {exc.os_error.strerror or exc.os_error}"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if secret:
            error = error.replace(secret, "***")
            if spec.auth_header:
                error = error.replace(spec.auth_header, "***")
        return status, error[:500]

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.interval_s
        tick = max(0.05, min(interval / 4, 5.0))
        while True:
            await asyncio.sleep(tick)
            try:
                self.queue_heartbeats()
            except Exception:
                log.exception("callback heartbeat failed; retrying")

    def queue_heartbeats(self) -> int:
        """Queue a heartbeat for every running run with callbacks whose last one is ``interval_s`` old."""
        now = self.monotonic()
        queued = 0
        for row in self.store.runs_in((RunStatus.running,), with_spec=True):
            last = self._last_queued.setdefault(row.run_id, now)
            if now - last < self.settings.interval_s:
                continue
            delivery = self._build(row, CallbackEvent.heartbeat, None)
            if delivery is not None:
                self.store.queue_heartbeat(row.run_id, delivery)
                queued += 1
        if queued:
            self._wake_soon()
        return queued
