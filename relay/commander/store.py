"""SQLite state of the commander: the only module that speaks SQL.

One connection, used only from the event loop's thread, in autocommit mode with
explicit transactions.  Every call is short (tens of microseconds of SQL), so an
aiohttp handler calls it directly: nothing else runs on the loop between a
decision and the statements that record it, which is what makes "check then
grant" atomic without locks.

Durability: the database is in WAL mode.  A change of ownership (a grant, a
release, an expiry, a cancel) is written with ``durable=True``: committed with
``synchronous=FULL``, i.e. fsynced, before the commander answers.  Progress
reports use ``synchronous=NORMAL`` (no fsync of their own): they survive a
``kill -9`` of the commander (the data is in the OS page cache) and lose at most
the last few reports on a power cut, which the next report repairs.  Lease
*expiry* times are not stored at all: they live in memory in ``leases.py``
(renewals never touch the disk) and every held lease gets a full TTL again when
the commander restarts.

Group commit: inside the running commander (:meth:`Store.start_group_commit`)
the writes made during one turn of the event loop share one transaction and one
fsync; handlers await :meth:`Store.committed` before they answer.  Outside it
(tests, tools) every write commits before it returns.

An exclusive ``flock`` on ``<state>.lock`` keeps a second commander off the same
state file, which would otherwise be a split brain with two epoch counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from relay.schema import CheckpointRef, RunStatus

#: Schema migrations, applied in order; PRAGMA user_version counts the applied ones.
#: Append new entries (issue 8: callbacks, deliveries); never edit an applied one.
MIGRATIONS: tuple[str, ...] = (
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
    # 2 (issue 8): when the latest checkpoint arrived, running time spent, and the callback outbox.
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
)

#: How much per-run history is kept (older rows are pruned as new ones arrive).
KEEP_METRICS = 2000
KEEP_LOGS = 10_000
_PRUNE_EVERY = 200  # inserts per run between prunes


class StoreError(RuntimeError):
    """The state file cannot be used (locked by another commander, unreadable, newer schema)."""


@dataclass
class RunRow:
    """One row of ``runs``: the run and its current lease (lease_id is None when nobody holds it)."""

    run_id: str
    status: RunStatus
    created_at: float
    updated_at: float
    mode: str | None = None
    epoch: int = 0
    step: int | None = None
    latest_checkpoint: CheckpointRef | None = None
    remote_step: int | None = None
    cancel_requested: bool = False
    detail: str | None = None
    priority: int = 0
    max_restarts: int | None = None
    restarts: int = 0
    spec_json: str | None = None
    lease_id: str | None = None
    lease_worker: str | None = None
    lease_granted_at: float | None = None
    released_lease_id: str | None = None
    checkpoint_at: float | None = None  # wall clock when latest_checkpoint last changed
    active_s: float = 0.0  # seconds spent under ended leases (the max_duration_s budget)
    released_outcome: str | None = None  # the outcome of the release of released_lease_id


_COLUMNS = tuple(f.name for f in fields(RunRow))
_UPSERT = (
    f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT(run_id) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in _COLUMNS[1:])}"
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM runs"


@dataclass
class NewEvent:
    ts: float
    epoch: int
    name: str
    worker_id: str | None = None
    message: str | None = None


@dataclass
class EventRow(NewEvent):
    id: int = 0


@dataclass
class MetricsRow:
    ts: float
    step: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LogRow:
    ts: float
    epoch: int
    stream: str
    line: str
    id: int = 0  # the row id: the logs endpoint's cursor


@dataclass
class NewDelivery:
    """A callback to send, written to the outbox in the transaction of the change it reports."""

    event: str
    payload: str  # JSON of a CallbackPayload
    created_at: float


@dataclass
class DeliveryRow:
    id: int
    run_id: str
    event: str
    payload: str
    created_at: float
    attempts: int
    next_attempt_at: float


@dataclass
class CallbackStateRow:
    """How a run's deliveries went so far (``pending`` counts its rows in the outbox)."""

    run_id: str
    pending: int = 0
    delivered: int = 0
    dropped: int = 0
    last_attempt_at: float | None = None
    last_delivery_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None


def _row_to_run(row: Sequence[object]) -> RunRow:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["status"] = RunStatus(data["status"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    ckpt = data["latest_checkpoint"]
    data["latest_checkpoint"] = CheckpointRef.model_validate_json(ckpt) if ckpt else None
    return RunRow(**data)  # type: ignore[arg-type]


def _run_to_params(run: RunRow) -> tuple[object, ...]:
    values = []
    for name in _COLUMNS:
        value = getattr(run, name)
        if name == "status":
            value = run.status.value
        elif name == "latest_checkpoint":
            value = run.latest_checkpoint.model_dump_json() if run.latest_checkpoint else None
        elif name == "cancel_requested":
            value = int(run.cancel_requested)
        values.append(value)
    return tuple(values)


class Store:
    """The commander's SQLite database.  Construct with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: str, lock_fd: int | None) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd
        self._sync_full: bool | None = None
        self._inserts_since_prune: dict[str, int] = {}
        # Group commit (see start_group_commit): the open batch transaction and who waits for it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tx_open = False
        self._tx_durable = False
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._on_commit_error: Callable[[BaseException], None] | None = None
        self.batches = 0  # commits of group-commit batches (for tests and metrics)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        """Open (creating if needed) the state at ``path``; ``":memory:"`` for a throwaway one."""
        path_s = str(path)
        lock_fd = None
        if path_s != ":memory:":
            parent = Path(path_s).resolve().parent
            if not parent.is_dir():
                raise StoreError(f"state directory {parent} does not exist")
            lock_fd = _lock(path_s + ".lock")
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path_s, isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            store = cls(conn, path_s, lock_fd)
            store._migrate()
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if lock_fd is not None:
                os.close(lock_fd)
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"cannot use state file {path_s}: {exc}") from exc
            raise
        store._sync_full = True
        return store

    def close(self) -> None:
        """Commit what is pending, checkpoint the WAL into the main file and let go of the lock."""
        self.stop_group_commit()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass
        self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _migrate(self) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"state file {self.path} has schema version {version}, newer than this commander "
                f"({len(MIGRATIONS)}); upgrade relay-trainer"
            )
        for index in range(version, len(MIGRATIONS)):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(MIGRATIONS[index]):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={index + 1}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ transactions

    def start_group_commit(
        self, loop: asyncio.AbstractEventLoop, on_error: Callable[[BaseException], None] | None = None
    ) -> None:
        """Batch the commits of writes made during one event-loop iteration into one transaction.

        A write's statements still run at once, inside the open batch transaction, so
        every later read on this connection sees them and the caller's check-then-write
        stays atomic.  Only the COMMIT (and its fsync) is deferred to a callback that
        runs once the handlers already scheduled have had their turn: under load one
        fsync covers many grants.  A caller that must not answer before its write is
        on disk awaits :meth:`committed`.  ``on_error`` is called when a batch fails
        to commit (it was rolled back), so in-memory state can be rebuilt from disk.
        """
        self._loop = loop
        self._on_commit_error = on_error

    def stop_group_commit(self) -> None:
        """Commit the open batch now and go back to one commit per write."""
        if self._tx_open:
            self._commit_batch()
        self._loop = None

    def committed(self) -> Awaitable[None]:
        """Resolves once every write made so far is committed (fsynced, if any of them was durable).

        Raises StoreError (through the awaitable) when that batch failed to commit.
        """
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._tx_open:
            self._waiters.append(fut)
        else:
            fut.set_result(None)
        return fut

    def _set_sync(self, durable: bool) -> None:
        if self._sync_full is not durable:
            self._conn.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._sync_full = durable

    def _write(self, durable: bool, work: list[tuple[str, Sequence[object]]]) -> None:
        if self._loop is None:  # one transaction per write, committed before returning
            self._set_sync(durable)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in work:
                    self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return
        if self._tx_open and durable and not self._tx_durable:
            # The safety level cannot change inside a transaction: commit the non-durable batch now
            # (no fsync) and start a durable one.
            self._commit_batch()
        if not self._tx_open:
            self._set_sync(durable)
            self._conn.execute("BEGIN IMMEDIATE")
            self._tx_open, self._tx_durable = True, durable
            self._flush_handle = self._loop.call_soon(self._flush)
        self._conn.execute("SAVEPOINT relay_write")
        try:
            for sql, params in work:
                self._conn.execute(sql, params)
        except BaseException:
            self._conn.execute("ROLLBACK TO relay_write")
            self._conn.execute("RELEASE relay_write")
            raise
        self._conn.execute("RELEASE relay_write")

    def _flush(self) -> None:
        self._flush_handle = None
        if self._tx_open:
            self._commit_batch()

    def _commit_batch(self) -> None:
        waiters, self._waiters = self._waiters, []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        error: BaseException | None = None
        try:
            self._conn.execute("COMMIT")
            self.batches += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            error = StoreError(f"could not commit to state file {self.path}: {exc}")
        finally:
            self._tx_open = self._tx_durable = False
        for fut in waiters:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
        if error is not None and self._on_commit_error is not None:
            self._on_commit_error(error)

    # ------------------------------------------------------------------ reads

    def get_run(self, run_id: str) -> RunRow | None:
        row = self._conn.execute(f"{_SELECT} WHERE run_id = ?", (run_id,)).fetchone()
        return _row_to_run(row) if row else None

    def list_runs(self) -> list[RunRow]:
        return [_row_to_run(r) for r in self._conn.execute(f"{_SELECT} ORDER BY created_at, run_id")]

    def held_leases(self) -> list[RunRow]:
        """Runs whose lease was granted and not yet released or expired (as of the last durable commit)."""
        return [_row_to_run(r) for r in self._conn.execute(f"{_SELECT} WHERE lease_id IS NOT NULL")]

    def oldest_waiting(self, statuses: Iterable[RunStatus], mode: str | None) -> RunRow | None:
        """The highest-priority, oldest run in ``statuses`` whose mode fits ``mode`` (None fits all)."""
        status_values = [s.value for s in statuses]
        marks = ", ".join("?" * len(status_values))
        sql = (
            f"{_SELECT} WHERE status IN ({marks}) AND lease_id IS NULL "
            "AND (? IS NULL OR mode IS NULL OR mode = ?) "
            "ORDER BY priority DESC, created_at, run_id LIMIT 1"
        )
        row = self._conn.execute(sql, (*status_values, mode, mode)).fetchone()
        return _row_to_run(row) if row else None

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

    def log_lines(self, run_id: str, after_id: int = 0, limit: int = 1000) -> list[LogRow]:
        """Up to ``limit`` log lines of a run after the cursor ``after_id``, oldest first."""
        rows = self._conn.execute(
            "SELECT id, ts, epoch, stream, line FROM logs WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
            (run_id, after_id, limit),
        ).fetchall()
        return [LogRow(id=r[0], ts=r[1], epoch=r[2], stream=r[3], line=r[4]) for r in rows]

    def log_tail(self, run_id: str, count: int) -> list[LogRow]:
        """The last ``count`` log lines of a run, oldest first."""
        rows = self._conn.execute(
            "SELECT id, ts, epoch, stream, line FROM logs WHERE run_id = ? ORDER BY id DESC LIMIT ?",
            (run_id, count),
        ).fetchall()
        return [LogRow(id=r[0], ts=r[1], epoch=r[2], stream=r[3], line=r[4]) for r in reversed(rows)]

    def latest_metrics(self, run_id: str) -> dict[str, float] | None:
        row = self._conn.execute(
            "SELECT metrics_json FROM metrics WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def count_by_status(self) -> dict[str, int]:
        return dict(self._conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())

    def runs_in(self, statuses: Iterable[RunStatus], *, with_spec: bool = False) -> list[RunRow]:
        """Runs in ``statuses`` (only submitted ones, with ``with_spec``): metrics and heartbeats read these."""
        values = [s.value for s in statuses]
        sql = f"{_SELECT} WHERE status IN ({', '.join('?' * len(values))})"
        if with_spec:
            sql += " AND spec_json IS NOT NULL"
        return [_row_to_run(r) for r in self._conn.execute(sql, values)]

    def run_gauges(
        self, statuses: Iterable[RunStatus]
    ) -> list[tuple[str, int | None, int | None, int | None, float | None, int]]:
        """(run_id, step, checkpoint step, remote step, checkpoint_at, restarts) per run: the metrics scrape.

        Plain tuples straight from SQL (the checkpoint step read with json_extract), so a scrape of
        thousands of runs holds the event loop for milliseconds, not for a model parse per row.
        """
        values = [s.value for s in statuses]
        return self._conn.execute(
            "SELECT run_id, step, json_extract(latest_checkpoint, '$.step'), remote_step, checkpoint_at, restarts "
            f"FROM runs WHERE status IN ({', '.join('?' * len(values))}) ORDER BY run_id",
            values,
        ).fetchall()

    # ------------------------------------------------------------------ callback outbox (reads)

    def due_deliveries(self, now: float, limit: int, skip_runs: Iterable[str] = ()) -> list[DeliveryRow]:
        """The oldest pending delivery of each run, when it is due: runs are delivered in order."""
        skip = list(skip_runs)
        marks = ", ".join("?" * len(skip))
        rows = self._conn.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id IN "
            "(SELECT MIN(id) FROM deliveries GROUP BY run_id) AND next_attempt_at <= ? "
            + (f"AND run_id NOT IN ({marks}) " if skip else "")
            + "ORDER BY next_attempt_at, id LIMIT ?",
            (now, *skip, limit),
        ).fetchall()
        return [DeliveryRow(*r) for r in rows]

    def next_delivery_at(self, skip_runs: Iterable[str] = ()) -> float | None:
        """When the next run's head delivery falls due (None: the outbox is empty)."""
        skip = list(skip_runs)
        marks = ", ".join("?" * len(skip))
        row = self._conn.execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE id IN "
            "(SELECT MIN(id) FROM deliveries GROUP BY run_id)"
            + (f" AND run_id NOT IN ({marks})" if skip else ""),
            skip,
        ).fetchone()
        return row[0] if row else None

    def pending_deliveries(self) -> int:
        (count,) = self._conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()
        return int(count)

    def callback_state(self, run_id: str) -> CallbackStateRow:
        row = self._conn.execute(
            "SELECT delivered, dropped, last_attempt_at, last_delivery_at, last_status, last_error "
            "FROM callback_state WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        state = CallbackStateRow(run_id) if row is None else CallbackStateRow(run_id, 0, *row)
        pending, next_at = self._conn.execute(
            "SELECT COUNT(*), MIN(next_attempt_at) FROM deliveries WHERE run_id = ?", (run_id,)
        ).fetchone()
        state.pending, state.next_attempt_at = int(pending), next_at
        return state

    # ------------------------------------------------------------------ writes

    def save_run(
        self,
        run: RunRow,
        events: Sequence[NewEvent] = (),
        *,
        durable: bool = True,
        outbox: Sequence[NewDelivery] = (),
    ) -> None:
        """Insert or update ``run``, append ``events`` and queue ``outbox`` callbacks in one transaction.

        ``durable=True`` (the default) is for changes of ownership and status: the
        commit is fsynced before this returns.  A callback is queued in the same
        transaction as the change it reports, so neither exists without the other.
        """
        work: list[tuple[str, Sequence[object]]] = [(_UPSERT, _run_to_params(run))]
        work += [_event_insert(run.run_id, e) for e in events]
        work += [_delivery_insert(run.run_id, d) for d in outbox]
        self._write(durable, work)

    def save_report(
        self,
        run: RunRow,
        events: Sequence[NewEvent] = (),
        metrics: MetricsRow | None = None,
        logs: Sequence[LogRow] = (),
        outbox: Sequence[NewDelivery] = (),
    ) -> None:
        """Progress of a run (step, checkpoint, metrics, events, log tail): committed without a fsync."""
        work: list[tuple[str, Sequence[object]]] = [(_UPSERT, _run_to_params(run))]
        work += [_event_insert(run.run_id, e) for e in events]
        work += [_delivery_insert(run.run_id, d) for d in outbox]
        if metrics is not None:
            work.append(
                (
                    "INSERT INTO metrics (run_id, ts, step, epoch, metrics_json) VALUES (?, ?, ?, ?, ?)",
                    (run.run_id, metrics.ts, metrics.step, metrics.epoch, json.dumps(metrics.metrics)),
                )
            )
        for line in logs:
            work.append(
                (
                    "INSERT INTO logs (run_id, ts, epoch, stream, line) VALUES (?, ?, ?, ?, ?)",
                    (run.run_id, line.ts, line.epoch, line.stream, line.line),
                )
            )
        count = self._inserts_since_prune.get(run.run_id, 0) + 1 + len(logs)
        if count >= _PRUNE_EVERY:
            count = 0
            work += _prune_statements(run.run_id)
        self._inserts_since_prune[run.run_id] = count
        self._write(False, work)

    # ------------------------------------------------------------------ callback outbox (writes)

    def queue_heartbeat(self, run_id: str, delivery: NewDelivery) -> None:
        """Queue a heartbeat, replacing one still waiting, so a receiver that is down never piles them up."""
        self._write(
            False,
            [
                (
                    "UPDATE deliveries SET payload = ?, created_at = ? WHERE run_id = ? AND event = ?",
                    (delivery.payload, delivery.created_at, run_id, delivery.event),
                ),
                (
                    "INSERT INTO deliveries (run_id, event, payload, created_at, next_attempt_at) "
                    "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM deliveries WHERE run_id = ? AND event = ?)",
                    (run_id, delivery.event, delivery.payload, delivery.created_at, delivery.created_at)
                    + (run_id, delivery.event),
                ),
            ],
        )

    def delivery_succeeded(self, delivery: DeliveryRow, now: float, http_status: int) -> None:
        self._write(
            False,
            [
                ("DELETE FROM deliveries WHERE id = ?", (delivery.id,)),
                *_callback_state_update(
                    delivery.run_id,
                    "delivered = delivered + 1, last_attempt_at = ?, last_delivery_at = ?, last_status = ?, "
                    "last_error = NULL",
                    (now, now, http_status),
                ),
            ],
        )

    def delivery_failed(
        self, delivery: DeliveryRow, now: float, http_status: int | None, error: str, retry_at: float | None
    ) -> None:
        """Record a failed attempt; ``retry_at`` None drops the delivery (its retries are used up)."""
        if retry_at is None:
            first: tuple[str, Sequence[object]] = ("DELETE FROM deliveries WHERE id = ?", (delivery.id,))
            counts = "dropped = dropped + 1, "
        else:
            first = (
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
                (retry_at, delivery.id),
            )
            counts = ""
        self._write(
            False,
            [
                first,
                *_callback_state_update(
                    delivery.run_id,
                    counts + "last_attempt_at = ?, last_status = ?, last_error = ?",
                    (now, http_status, error),
                ),
            ],
        )

    def retry_deliveries_now(self, now: float) -> None:
        """After a restart every waiting delivery gets a fresh chance at once."""
        self._write(
            False, [("UPDATE deliveries SET next_attempt_at = ? WHERE next_attempt_at > ?", (now, now))]
        )


_DELIVERY_COLUMNS = "id, run_id, event, payload, created_at, attempts, next_attempt_at"


def _delivery_insert(run_id: str, delivery: NewDelivery) -> tuple[str, Sequence[object]]:
    return (
        "INSERT INTO deliveries (run_id, event, payload, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
        (run_id, delivery.event, delivery.payload, delivery.created_at, delivery.created_at),
    )


def _callback_state_update(
    run_id: str, assignments: str, params: tuple[object, ...]
) -> list[tuple[str, Sequence[object]]]:
    return [
        ("INSERT INTO callback_state (run_id) VALUES (?) ON CONFLICT(run_id) DO NOTHING", (run_id,)),
        (f"UPDATE callback_state SET {assignments} WHERE run_id = ?", (*params, run_id)),
    ]


def _event_insert(run_id: str, event: NewEvent) -> tuple[str, Sequence[object]]:
    return (
        "INSERT INTO events (run_id, ts, epoch, name, worker_id, message) VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, event.ts, event.epoch, event.name, event.worker_id, event.message),
    )


def _prune_statements(run_id: str) -> list[tuple[str, Sequence[object]]]:
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


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _lock(lock_path: str) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise StoreError(
            f"state file {lock_path[: -len('.lock')]} is in use by another commander (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
