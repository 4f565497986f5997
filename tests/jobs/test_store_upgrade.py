"""A state file written by an older commander opens with the new tables and columns, its runs intact."""

from __future__ import annotations

from relay.commander.store import NewDelivery, Store, migrations
from relay.schema import RunStatus


def test_a_version_1_state_file_is_migrated(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        old = Store.open(path)
        # written as the issue-2 commander did (its RunRow had no checkpoint_at / active_s)
        old._conn.execute(
            "INSERT INTO runs (run_id, status, created_at, updated_at, epoch) VALUES ('r1', 'preempted', 1, 2, 4)"
        )
        old.close()
    store = Store.open(path)
    (version,) = store._conn.execute("PRAGMA user_version").fetchone()
    assert version == len(migrations.MIGRATIONS) == 5
    run = store.get_run("r1")
    assert run is not None and run.epoch == 4 and run.status is RunStatus.preempted
    assert run.active_s == 0.0 and run.checkpoint_at is None and run.released_outcome is None
    assert run.epoch_floor is None and run.lease_active_s == 0.0  # migration 5
    store.save_run(run, outbox=[NewDelivery("preempted", "{}", 3.0)])
    assert store.pending_deliveries() == 1 and store.callback_state("r1").pending == 1
    store.close()


def test_a_version_3_state_file_gets_its_lease_history_back_from_the_events(tmp_path, monkeypatch):
    """Migration 4 rebuilds one lease per granted epoch, as well as the old events tell it."""
    path = tmp_path / "v3.db"
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])
        old = Store.open(path)
        sql = old._conn.execute
        sql(
            "INSERT INTO runs (run_id, status, created_at, updated_at, epoch, lease_id, lease_worker) "
            "VALUES ('r1', 'running', 1, 9, 4, 'L4', 'w3')"
        )
        for ts, epoch, name, worker in [
            (1, 1, "acquired", "w1"),
            (2, 1, "preempted", "w1"),
            (3, 2, "acquired", "w2"),
            (4, 2, "lease_expired", "w2"),
            (5, 3, "acquired", "w2"),  # replaced by the same worker's epoch 4: fenced
            (6, 4, "acquired", "w3"),
        ]:
            sql(
                "INSERT INTO events (run_id, ts, epoch, name, worker_id) VALUES ('r1', ?, ?, ?, ?)",
                (ts, epoch, name, worker),
            )
        for step, epoch in [(10, 1), (20, 1), (30, 4)]:
            sql(
                "INSERT INTO metrics (run_id, ts, step, epoch, metrics_json) VALUES ('r1', 1, ?, ?, '{}')",
                (step, epoch),
            )
        sql("INSERT INTO logs (run_id, ts, epoch, stream, line) VALUES ('r1', 1, 1, 'stdout', 'old line')")
        old.close()
    store = Store.open(path)
    history = [
        (x.epoch, x.worker_id, x.ended, x.ended_at, x.first_step, x.last_step)
        for x in store.lease_history("r1")
    ]
    assert history == [
        (1, "w1", "preempted", 2.0, 10, 20),
        (2, "w2", "expired", 4.0, None, None),
        (3, "w2", "fenced", 6.0, None, None),
        (4, "w3", None, None, 30, 30),
    ]
    assert store.lease_record("r1", 4).lease_id == "L4"  # the live lease: its holder is still recognised
    [line] = store.log_lines("r1")
    assert (line.line, line.epoch, line.worker_id) == ("old line", 1, None)  # the pod of old lines is unknown
    store.close()
