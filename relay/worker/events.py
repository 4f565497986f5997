"""The worker's structured events: one JSON line each in ``runs/<run_id>/events.jsonl``, and a queue for reports.

The events file is the local, append-only truth of what this pod did with a run (it survives a
commander that is unreachable, and the handoff benchmark reads its timestamps); the same records
are forwarded to the commander by the reporter, best-effort.  Lines are flushed at once so a
worker killed with -9 still leaves every event it wrote.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Every name a worker may write (stdlib only: writing an event never loads the wire schema).
from relay.eventnames import WORKER_EVENTS as EVENT_NAMES

if TYPE_CHECKING:
    from relay.worker.lease import Lease

log = logging.getLogger("relay.worker.events")


class EventLog:
    """Appends events for one run held under one epoch; thread-safe (the syncer calls back from its thread)."""

    def __init__(self, path: Path, lease: Lease, *, max_pending: int = 1000) -> None:
        self.path = path
        self.run_id = lease.run_id
        self.worker_id = lease.worker_id
        self.epoch = lease.epoch
        self._lock = threading.Lock()
        self._pending: deque[dict[str, Any]] = deque(maxlen=max_pending)
        self._listeners: list[Any] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run's lifetime

    def add_listener(self, fn: Any) -> None:
        """``fn(record)`` is called after each event is written (the reporter uses it to wake up)."""
        self._listeners.append(fn)

    def emit(self, event: str, message: str | None = None, **fields: Any) -> dict[str, Any]:
        """Write one event line now and queue it for the commander; never raises on a full disk."""
        if event not in EVENT_NAMES:
            raise ValueError(f"unknown event {event!r}")
        record: dict[str, Any] = {
            "ts": time.time(),
            "event": event,
            "run_id": self.run_id,
            "worker_id": self.worker_id,
            "epoch": self.epoch,
        }
        if message is not None:
            record["message"] = message
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(record, default=str, sort_keys=False)
        with self._lock:
            try:
                if not self._fh.closed:
                    self._fh.write(line + "\n")
                    self._fh.flush()
            except OSError as exc:  # a full volume must not take the worker down with it
                log.warning("could not write %s: %s", self.path, exc)
            self._pending.append(record)
        log.info("event %s: %s", event, describe(record))
        for fn in list(self._listeners):
            try:
                fn(record)
            except Exception:  # pragma: no cover - a listener must never break emitting
                log.exception("event listener failed")
        return record

    def take_pending(self) -> dict[str, Any] | None:
        """The oldest event not yet accepted by the commander (left queued until ``ack``)."""
        with self._lock:
            return self._pending[0] if self._pending else None

    def ack(self, record: dict[str, Any]) -> None:
        """Drop ``record`` from the queue once the commander took it (or refused it for good)."""
        with self._lock:
            if self._pending and self._pending[0] is record:
                self._pending.popleft()

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                try:
                    self._fh.close()
                except OSError as exc:  # the last lines could not be flushed: the volume is full
                    log.warning("could not write %s: %s", self.path, exc)


_HEADER = {"ts", "event", "run_id", "worker_id", "epoch", "message", "log_tail"}


def describe(record: dict[str, Any], limit: int = 8000) -> str:
    """An event's message and fields as one short line (logs, the commander's timeline)."""
    parts = [str(record["message"])] if record.get("message") else []
    parts += [f"{k}={v}" for k, v in record.items() if k not in _HEADER]
    return " ".join(parts)[:limit]


def read_events(path: Path) -> list[dict[str, Any]]:
    """All events in an events.jsonl (tests, the benchmark, ``relayctl status`` on a pod)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line after a crash
    return out
