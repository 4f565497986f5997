"""A state file written before issue 8 opens with the new tables and columns, its runs intact."""

from __future__ import annotations

from relay.commander import store as store_module
from relay.commander.store import NewDelivery, Store
from relay.schema import RunStatus


def test_a_version_1_state_file_is_migrated(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:1])
        old = Store.open(path)
        # written as the issue-2 commander did (its RunRow had no checkpoint_at / active_s)
        old._conn.execute(
            "INSERT INTO runs (run_id, status, created_at, updated_at, epoch) VALUES ('r1', 'preempted', 1, 2, 4)"
        )
        old.close()
    store = Store.open(path)
    (version,) = store._conn.execute("PRAGMA user_version").fetchone()
    assert version == len(store_module.MIGRATIONS) == 3
    run = store.get_run("r1")
    assert run is not None and run.epoch == 4 and run.status is RunStatus.preempted
    assert run.active_s == 0.0 and run.checkpoint_at is None and run.released_outcome is None
    store.save_run(run, outbox=[NewDelivery("preempted", "{}", 3.0)])
    assert store.pending_deliveries() == 1 and store.callback_state("r1").pending == 1
    store.close()
