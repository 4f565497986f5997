"""The commander's SQLite state; this package holds the only SQL in the commander.

- ``migrations``: the schema, applied in order and counted by ``PRAGMA user_version``;
- ``engine``: the connection, WAL, the two durability levels and group commit (:class:`TxEngine`);
- ``runs``, ``history``, ``outbox``: the statements, over runs, their history (events, metrics,
  log lines, leases) and the callback outbox;
- ``rows``: the plain rows they read and write.

:class:`Store` is all of it over one connection: ``Store.open(path)``.
"""

from __future__ import annotations

from relay.commander.store.engine import StoreError, TxEngine
from relay.commander.store.history import HistoryQueries
from relay.commander.store.outbox import OutboxQueries
from relay.commander.store.rows import (
    CallbackStateRow,
    DeliveryRow,
    EventRow,
    LeaseChange,
    LeaseEnded,
    LeaseGranted,
    LeaseProgress,
    LeaseRow,
    LogRow,
    MetricsRow,
    NewDelivery,
    NewEvent,
    RunRow,
)
from relay.commander.store.runs import RunQueries

__all__ = [
    "CallbackStateRow",
    "DeliveryRow",
    "EventRow",
    "LeaseChange",
    "LeaseEnded",
    "LeaseGranted",
    "LeaseProgress",
    "LeaseRow",
    "LogRow",
    "MetricsRow",
    "NewDelivery",
    "NewEvent",
    "RunRow",
    "Store",
    "StoreError",
    "TxEngine",
]


class Store(RunQueries, HistoryQueries, OutboxQueries):
    """The commander's database: runs, their history and the callback outbox, over one connection
    with group commit (see ``relay.commander.store.engine``).  Construct with :meth:`open`."""
