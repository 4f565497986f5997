"""The callback outbox's SQL: deliveries waiting to be sent and how each run's deliveries went.

Rows are queued with the change they report (``delivery_insert``, used by the runs' writes) and
sent, retried or dropped by ``relay.commander.callbacks``.
"""

from __future__ import annotations

from collections.abc import Iterable

from relay.commander.store.engine import Statement, TxEngine
from relay.commander.store.rows import CallbackStateRow, DeliveryRow, NewDelivery

_DELIVERY_COLUMNS = "id, run_id, event, payload, created_at, attempts, next_attempt_at"


def delivery_insert(run_id: str, delivery: NewDelivery) -> Statement:
    """The statement that queues ``delivery`` (in the transaction of the change it reports)."""
    return (
        "INSERT INTO deliveries (run_id, event, payload, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
        (run_id, delivery.event, delivery.payload, delivery.created_at, delivery.created_at),
    )


def _callback_state_update(run_id: str, assignments: str, params: tuple[object, ...]) -> list[Statement]:
    return [
        ("INSERT INTO callback_state (run_id) VALUES (?) ON CONFLICT(run_id) DO NOTHING", (run_id,)),
        (f"UPDATE callback_state SET {assignments} WHERE run_id = ?", (*params, run_id)),
    ]


class OutboxQueries(TxEngine):
    """Reads and writes of ``deliveries`` and ``callback_state``."""

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
            first: Statement = ("DELETE FROM deliveries WHERE id = ?", (delivery.id,))
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
