"""The state file's schema: migrations applied in order, counted by ``PRAGMA user_version``.

Append new entries; never edit one that shipped (a commander opening an older file applies the
missing ones in one transaction each, and refuses a file newer than itself).
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: runs with their current lease, the event timeline, metrics and the log timeline.
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        mode TEXT,
        epoch INTEGER NOT NULL DEFAULT 0,
        step INTEGER,
        latest_checkpoint TEXT,
        remote_step INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        detail TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        max_restarts INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        spec_json TEXT,
        lease_id TEXT,
        lease_worker TEXT,
        lease_granted_at REAL,
        released_lease_id TEXT
    );
    CREATE INDEX runs_waiting ON runs(status, priority DESC, created_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        ts REAL NOT NULL,
        epoch INTEGER NOT NULL,
        name TEXT NOT NULL,
        worker_id TEXT,
        message TEXT
    );
    CREATE INDEX events_run ON events(run_id, id);
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        ts REAL NOT NULL,
        step INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        metrics_json TEXT NOT NULL
    );
    CREATE INDEX metrics_run ON metrics(run_id, id);
    CREATE TABLE logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        ts REAL NOT NULL,
        epoch INTEGER NOT NULL,
        stream TEXT NOT NULL,
        line TEXT NOT NULL
    );
    CREATE INDEX logs_run ON logs(run_id, id);
    """,
    # 2 (runs as jobs): when the latest checkpoint arrived, running time spent, and the callback outbox.
    """
    ALTER TABLE runs ADD COLUMN checkpoint_at REAL;
    ALTER TABLE runs ADD COLUMN active_s REAL NOT NULL DEFAULT 0;
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL
    );
    CREATE INDEX deliveries_run ON deliveries(run_id, id);
    CREATE TABLE callback_state (
        run_id TEXT PRIMARY KEY,
        delivered INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        last_attempt_at REAL,
        last_delivery_at REAL,
        last_status INTEGER,
        last_error TEXT
    );
    """,
    # 3: the outcome the last release asked for, so a retried release can be told from a different one.
    """
    ALTER TABLE runs ADD COLUMN released_outcome TEXT;
    """,
    # 4: the lease history (one row per epoch) and the pod that shipped each log line.  A file written
    # before it gets its history back from the events, as well as they tell it: an ended lease is named
    # by the status its release led to, and steps come from the metrics of its epoch.
    """
    CREATE TABLE leases (
        run_id TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        worker_id TEXT NOT NULL,
        lease_id TEXT,
        granted_at REAL NOT NULL,
        ended_at REAL,
        ended TEXT,
        first_step INTEGER,
        last_step INTEGER,
        fenced_at REAL,
        PRIMARY KEY (run_id, epoch)
    );
    ALTER TABLE logs ADD COLUMN worker_id TEXT;
    INSERT OR IGNORE INTO leases (run_id, epoch, worker_id, granted_at)
        SELECT run_id, epoch, COALESCE(worker_id, ''), MIN(ts) FROM events
        WHERE name = 'acquired' GROUP BY run_id, epoch;
    UPDATE leases SET lease_id = (
        SELECT lease_id FROM runs WHERE runs.run_id = leases.run_id AND runs.epoch = leases.epoch
    );
    UPDATE leases SET (ended, ended_at) = (
        SELECT CASE e.name WHEN 'lease_expired' THEN 'expired' ELSE e.name END, e.ts FROM events e
        WHERE e.run_id = leases.run_id AND e.epoch = leases.epoch
        AND e.name IN ('preempted', 'completed', 'failed', 'cancelled', 'lease_expired')
        ORDER BY e.id LIMIT 1
    ) WHERE lease_id IS NULL;
    UPDATE leases SET ended = 'fenced', ended_at = (
        SELECT MIN(later.granted_at) FROM leases later
        WHERE later.run_id = leases.run_id AND later.epoch > leases.epoch
    ) WHERE lease_id IS NULL AND ended IS NULL;
    UPDATE leases SET
        first_step = (SELECT step FROM metrics m WHERE m.run_id = leases.run_id AND m.epoch = leases.epoch
                      ORDER BY m.id LIMIT 1),
        last_step = (SELECT step FROM metrics m WHERE m.run_id = leases.run_id AND m.epoch = leases.epoch
                     ORDER BY m.id DESC LIMIT 1);
    """,
    # 5 (fencing against storage, budgets on a monotonic clock): the highest epoch known to exist outside
    # this state - its remote's, or one a holder showed - which the next grant goes past, and the running
    # time of the current lease as of its last save, so a restart keeps its count without the wall clock.
    """
    ALTER TABLE runs ADD COLUMN epoch_floor INTEGER;
    ALTER TABLE runs ADD COLUMN lease_active_s REAL NOT NULL DEFAULT 0;
    """,
)


class MigrationError(RuntimeError):
    """The file's schema is newer than this commander knows."""


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Apply the migrations ``conn``'s file lacks, each in its own transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise MigrationError(
            f"state file {path} has schema version {version}, newer than this commander "
            f"({len(MIGRATIONS)}); upgrade relay-trainer"
        )
    for index in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(MIGRATIONS[index]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={index + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back itself (a full disk)
                conn.execute("ROLLBACK")
            raise


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
