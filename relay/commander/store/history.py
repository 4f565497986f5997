"""A run's history in SQL: its events, metrics, log lines and leases (one row per epoch).

The statement builders here are used by the runs' writes (``relay.commander.store.runs``), so a
change and the history it leaves are written in one transaction.  Metrics and logs are bounded
per run: older rows are pruned as new ones arrive.
"""

from __future__ import annotations

import json

from relay.commander.store.engine import Statement, TxEngine
from relay.commander.store.rows import (
    EventRow,
    LeaseChange,
    LeaseEnded,
    LeaseGranted,
    LeaseProgress,
    LeaseRow,
    LogRow,
    MetricsRow,
    NewEvent,
)

#: How much per-run history is kept (older rows are pruned as new ones arrive).
KEEP_METRICS = 2000
KEEP_LOGS = 10_000
PRUNE_EVERY = 200  # inserts per run between prunes

_LEASE_COLUMNS = (
    "run_id, epoch, worker_id, lease_id, granted_at, ended_at, ended, first_step, last_step, fenced_at"
)
_LOG_COLUMNS = "id, ts, epoch, stream, line, worker_id"


def event_insert(run_id: str, event: NewEvent) -> Statement:
    return (
        "INSERT INTO events (run_id, ts, epoch, name, worker_id, message) VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, event.ts, event.epoch, event.name, event.worker_id, event.message),
    )


def metrics_insert(run_id: str, metrics: MetricsRow) -> Statement:
    return (
        "INSERT INTO metrics (run_id, ts, step, epoch, metrics_json) VALUES (?, ?, ?, ?, ?)",
        (run_id, metrics.ts, metrics.step, metrics.epoch, json.dumps(metrics.metrics)),
    )


def log_insert(run_id: str, line: LogRow) -> Statement:
    return (
        "INSERT INTO logs (run_id, ts, epoch, stream, line, worker_id) VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, line.ts, line.epoch, line.stream, line.line, line.worker_id),
    )


def lease_statements(run_id: str, change: LeaseChange) -> list[Statement]:
    """What ``change`` does to the run's lease history."""
    if isinstance(change, LeaseGranted):
        return [
            (  # a lease still open here was replaced while live (its worker asked again): fenced by this one
                "UPDATE leases SET ended = 'fenced', ended_at = ? WHERE run_id = ? AND ended_at IS NULL",
                (change.at, run_id),
            ),
            (
                "INSERT OR REPLACE INTO leases (run_id, epoch, worker_id, lease_id, granted_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, change.epoch, change.worker_id, change.lease_id, change.at),
            ),
        ]
    if isinstance(change, LeaseEnded):
        return [
            (
                "UPDATE leases SET ended = ?, ended_at = ?, last_step = COALESCE(?, last_step), "
                "first_step = COALESCE(first_step, ?) WHERE run_id = ? AND epoch = ? AND ended_at IS NULL",
                (change.how, change.at, change.step, change.step, run_id, change.epoch),
            )
        ]
    assert isinstance(change, LeaseProgress)
    return [
        (
            "UPDATE leases SET first_step = CASE WHEN ? THEN ? ELSE COALESCE(first_step, ?) END, "
            "last_step = ? WHERE run_id = ? AND epoch = ?",
            (change.resumed, change.step, change.step, change.step, run_id, change.epoch),
        )
    ]


def prune_statements(run_id: str) -> list[Statement]:
    """Drop a run's metrics and log lines beyond what is kept."""
    return [
        (
            "DELETE FROM metrics WHERE run_id = ? AND id <= "
            "(SELECT id FROM metrics WHERE run_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (run_id, run_id, KEEP_METRICS),
        ),
        (
            "DELETE FROM logs WHERE run_id = ? AND id <= "
            "(SELECT id FROM logs WHERE run_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (run_id, run_id, KEEP_LOGS),
        ),
    ]


def prune_if_due(counts: dict[str, int], run_id: str, inserts: int) -> list[Statement]:
    """Count ``inserts`` more history rows of ``run_id`` in ``counts``; every PRUNE_EVERY, the pruning."""
    count = counts.get(run_id, 0) + inserts
    if count < PRUNE_EVERY:
        counts[run_id] = count
        return []
    counts[run_id] = 0
    return prune_statements(run_id)


def _log_row(r: tuple) -> LogRow:
    return LogRow(id=r[0], ts=r[1], epoch=r[2], stream=r[3], line=r[4], worker_id=r[5])


class HistoryQueries(TxEngine):
    """Reads of a run's history, and the one history write that changes no run: a fenced call."""

    def recent_events(self, run_id: str, limit: int = 50) -> list[EventRow]:
        rows = self._conn.execute(
            "SELECT id, ts, epoch, name, worker_id, message FROM events WHERE run_id = ? "
            "ORDER BY id DESC LIMIT ?",
            (run_id, limit),
        ).fetchall()
        return [
            EventRow(id=r[0], ts=r[1], epoch=r[2], name=r[3], worker_id=r[4], message=r[5])
            for r in reversed(rows)
        ]

    def metrics_history(self, run_id: str, limit: int = 200) -> list[MetricsRow]:
        rows = self._conn.execute(
            "SELECT ts, step, epoch, metrics_json FROM metrics WHERE run_id = ? ORDER BY id DESC LIMIT ?",
            (run_id, limit),
        ).fetchall()
        return [MetricsRow(ts=r[0], step=r[1], epoch=r[2], metrics=json.loads(r[3])) for r in reversed(rows)]

    def latest_metrics(self, run_id: str) -> dict[str, float] | None:
        row = self._conn.execute(
            "SELECT metrics_json FROM metrics WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def log_lines(self, run_id: str, after_id: int = 0, limit: int = 1000) -> list[LogRow]:
        """Up to ``limit`` log lines of a run after the cursor ``after_id``, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_LOG_COLUMNS} FROM logs WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
            (run_id, after_id, limit),
        ).fetchall()
        return [_log_row(r) for r in rows]

    def log_tail(self, run_id: str, count: int) -> list[LogRow]:
        """The last ``count`` log lines of a run, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_LOG_COLUMNS} FROM logs WHERE run_id = ? ORDER BY id DESC LIMIT ?",
            (run_id, count),
        ).fetchall()
        return [_log_row(r) for r in reversed(rows)]

    def lease_history(self, run_id: str, limit: int = 100) -> list[LeaseRow]:
        """The run's last ``limit`` leases, oldest epoch first."""
        rows = self._conn.execute(
            f"SELECT {_LEASE_COLUMNS} FROM leases WHERE run_id = ? ORDER BY epoch DESC LIMIT ?",
            (run_id, limit),
        ).fetchall()
        return [LeaseRow(*r) for r in reversed(rows)]

    def lease_record(self, run_id: str, epoch: int) -> LeaseRow | None:
        row = self._conn.execute(
            f"SELECT {_LEASE_COLUMNS} FROM leases WHERE run_id = ? AND epoch = ?", (run_id, epoch)
        ).fetchone()
        return LeaseRow(*row) if row else None

    def save_fenced(self, run_id: str, event: NewEvent) -> None:
        """The holder of an ended lease called again: mark its epoch and record the event (no fsync)."""
        self._write(
            False,
            [
                (
                    "UPDATE leases SET fenced_at = ? WHERE run_id = ? AND epoch = ? AND fenced_at IS NULL",
                    (event.ts, run_id, event.epoch),
                ),
                event_insert(run_id, event),
            ],
        )
