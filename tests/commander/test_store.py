"""The SQLite store: WAL, durability levels, schema versioning, the single-commander lock, pruning."""

from __future__ import annotations

import sqlite3
import time

import pytest

from relay.commander.store import LogRow, MetricsRow, NewEvent, RunRow, Store, StoreError, migrations
from relay.commander.store import history as store_history
from relay.schema import CheckpointRef, RunStatus


def make_run(run_id: str = "r1", **over) -> RunRow:
    now = time.time()
    return RunRow(run_id=run_id, status=RunStatus.running, created_at=now, updated_at=now, **over)


def synchronous(store: Store) -> int:
    return store._conn.execute("PRAGMA synchronous").fetchone()[0]


def test_wal_and_fsync_levels(tmp_path):
    path = tmp_path / "s.db"
    store = Store.open(path)
    try:
        store.save_run(
            make_run(lease_id="L", lease_worker="w1", epoch=1), [NewEvent(1.0, 1, "acquired", "w1")]
        )
        assert synchronous(store) == 2  # FULL: ownership changes are fsynced before the answer
        store.save_report(make_run(step=3), metrics=MetricsRow(2.0, 3, 1, {"loss": 0.5}))
        assert synchronous(store) == 1  # NORMAL: progress reports are not fsynced one by one
        store.save_run(make_run(step=3))
        assert synchronous(store) == 2
    finally:
        store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_round_trip_of_a_run_row(tmp_path):
    store = Store.open(tmp_path / "s.db")
    row = make_run(
        mode="rl",
        epoch=4,
        step=10,
        latest_checkpoint=CheckpointRef(step=8, path="/c", remote_revision="r"),
        remote_step=6,
        cancel_requested=True,
        detail="d",
        priority=2,
        max_restarts=3,
        restarts=1,
        spec_json='{"mode":"rl"}',
        lease_id="L",
        lease_worker="w",
        lease_granted_at=5.0,
        released_lease_id="old",
    )
    store.save_run(row)
    assert store.get_run("r1") == row
    assert store.held_leases() == [row]
    store.close()


def test_a_second_commander_cannot_open_the_same_state(tmp_path):
    first = Store.open(tmp_path / "s.db")
    with pytest.raises(StoreError, match="in use by another commander"):
        Store.open(tmp_path / "s.db")
    first.close()
    Store.open(tmp_path / "s.db").close()  # free again once the first lets go


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.db"
    Store.open(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version={len(migrations.MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this commander"):
        Store.open(path)
    Store.open(tmp_path / "other.db").close()  # the failed open released its lock file too
    with pytest.raises(StoreError, match="newer than this commander"):
        Store.open(path)


def test_garbage_state_file_is_a_store_error(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"is not an SQLite database .*\(check: header\)"):
        Store.open(path)


def test_history_is_pruned_per_run(tmp_path, monkeypatch):
    monkeypatch.setattr(store_history, "KEEP_METRICS", 5)
    monkeypatch.setattr(store_history, "KEEP_LOGS", 7)
    monkeypatch.setattr(store_history, "PRUNE_EVERY", 3)
    store = Store.open(tmp_path / "s.db")
    for step in range(30):
        store.save_report(
            make_run(step=step),
            metrics=MetricsRow(float(step), step, 1, {"loss": 1.0}),
            logs=[LogRow(float(step), 1, "stdout", f"line {step}")],
        )
    history = store.metrics_history("r1", limit=100)
    assert 5 <= len(history) < 5 + 3 and history[-1].step == 29
    lines = store.log_lines("r1", limit=100)
    assert 7 <= len(lines) < 7 + 6 and lines[-1].line == "line 29"
    cursor = lines[-3].id  # the line of step 27
    assert [line.line for line in store.log_lines("r1", after_id=cursor)] == ["line 28", "line 29"]
    assert [line.line for line in store.log_tail("r1", 2)] == ["line 28", "line 29"]
    store.close()


class FailingCommits:
    """Wraps the store's connection; while ``failing`` is set, every COMMIT raises like a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.failing = False

    def execute(self, sql: str, *args):
        if self.failing and sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


async def test_concurrent_grants_share_commits_and_are_on_disk_when_answered(make_commander, tmp_path):
    import asyncio

    from tests.commander.calls import acquire, leases_of

    state = tmp_path / "group.db"
    client = await make_commander(state=state)
    store = leases_of(client).store
    before = store.batches
    reader = sqlite3.connect(state)

    async def acquire_and_check(i: int) -> None:
        status, grant = await acquire(client, f"run-{i}", f"w{i}")
        assert status == 200
        # Answered, so committed: another connection sees the lease.
        row = reader.execute("SELECT lease_id, epoch FROM runs WHERE run_id = ?", (f"run-{i}",)).fetchone()
        assert row == (grant["lease_id"], 1)

    await asyncio.gather(*(acquire_and_check(i) for i in range(64)))
    assert store.batches - before < 64  # fsyncs were shared
    reader.close()


async def test_a_failed_commit_answers_503_and_rolls_memory_back(make_commander):
    from tests.commander.calls import acquire, get_run, leases_of, release, renew

    client = await make_commander()
    leases = leases_of(client)
    _, held = await acquire(client, "kept", "w1")
    proxy = FailingCommits(leases.store._conn)
    leases.store._conn = proxy  # type: ignore[assignment]

    proxy.failing = True
    status, body = await acquire(client, "lost", "w2")
    assert status == 503 and body["code"] == "store_error" and "disk is full" in body["error"]
    status, body = await release(client, held, "completed")
    assert status == 503
    proxy.failing = False

    assert (await client.get("/api/runs/lost")).status == 404  # the grant was rolled back
    assert leases.live_lease("lost") is None
    assert (await renew(client, held))[0] == 200  # the failed release did not end the lease
    assert (await get_run(client, "kept"))["status"] == "running"
    assert (await release(client, held, "completed"))[0] == 200
