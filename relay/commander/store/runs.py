"""The runs' SQL: a run row with its current lease, and the writes that change a run.

A change of a run is one transaction: the run row, the events it records, the lease history it
moves, the callbacks it queues (``save_run``), or a holder's progress with its metrics and log
lines (``save_report``).  Reads here are of runs; a run's history is read in
``relay.commander.store.history``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any

from relay.commander.store.engine import Statement, TxEngine
from relay.commander.store.history import (
    event_insert,
    lease_statements,
    log_insert,
    metrics_insert,
    prune_if_due,
)
from relay.commander.store.outbox import delivery_insert
from relay.commander.store.rows import LeaseChange, LogRow, MetricsRow, NewDelivery, NewEvent, RunRow
from relay.schema import CheckpointRef, RunStatus

_COLUMNS = tuple(f.name for f in fields(RunRow))
_UPSERT = (
    f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT(run_id) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in _COLUMNS[1:])}"
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM runs"


def _row_to_run(row: Sequence[object]) -> RunRow:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["status"] = RunStatus(data["status"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    ckpt = data["latest_checkpoint"]
    data["latest_checkpoint"] = CheckpointRef.model_validate_json(ckpt) if ckpt else None  # type: ignore[arg-type]
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


class RunQueries(TxEngine):
    """Reads of ``runs`` and the writes that change a run."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._inserts_since_prune: dict[str, int] = {}

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

    # ------------------------------------------------------------------ writes

    def save_run(
        self,
        run: RunRow,
        events: Sequence[NewEvent] = (),
        *,
        durable: bool = True,
        outbox: Sequence[NewDelivery] = (),
        lease: LeaseChange | None = None,
    ) -> None:
        """Insert or update ``run``, append ``events``, move its lease history by ``lease`` and queue
        ``outbox`` callbacks, in one transaction.

        ``durable=True`` (the default) is for changes of ownership and status: the
        commit is fsynced before the commander answers.  A callback is queued in the same
        transaction as the change it reports, so neither exists without the other.
        """
        work = self._change(run, events, outbox, lease)
        self._write(durable, work)

    def save_report(
        self,
        run: RunRow,
        events: Sequence[NewEvent] = (),
        metrics: MetricsRow | None = None,
        logs: Sequence[LogRow] = (),
        outbox: Sequence[NewDelivery] = (),
        lease: LeaseChange | None = None,
    ) -> None:
        """Progress of a run (step, checkpoint, metrics, events, log tail): committed without a fsync."""
        work = self._change(run, events, outbox, lease)
        if metrics is not None:
            work.append(metrics_insert(run.run_id, metrics))
        work += [log_insert(run.run_id, line) for line in logs]
        work += prune_if_due(self._inserts_since_prune, run.run_id, 1 + len(logs))
        self._write(False, work)

    @staticmethod
    def _change(
        run: RunRow, events: Sequence[NewEvent], outbox: Sequence[NewDelivery], lease: LeaseChange | None
    ) -> list[Statement]:
        work: list[Statement] = [(_UPSERT, _run_to_params(run))]
        work += [event_insert(run.run_id, e) for e in events]
        work += [delivery_insert(run.run_id, d) for d in outbox]
        if lease is not None:
            work += lease_statements(run.run_id, lease)
        return work
