"""The commander-side chaos faults of issue 13, each under the independent checker: a duplicate worker id,
the commander's state deleted or replaced by an older copy, and a flood of slow clients.  The promise
is the same in each: never two trainers of one run alive at once, epochs of trainers only go forward,
and every run completes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from relay_testkit import chaos_faults
from relay_testkit.chaos_checks import check_artifacts
from relay_testkit.chaos_cluster import ChaosCluster, ChaosSettings, WorkerHandle, read_jsonl
from relay_testkit.wait import wait_for


def settings(**over: object) -> ChaosSettings:
    base = dict(
        runs=1,
        ttl_s=3.0,
        safety_margin_s=1.0,
        kill_grace_s=0.5,
        max_steps=200,
        save_steps=10,
        step_seconds=0.03,
        slow_checkpoint_s=0.0,
    )
    return ChaosSettings(**{**base, **over})  # type: ignore[arg-type]


def events(w: WorkerHandle, run_id: str) -> list[dict]:
    return read_jsonl(w.volume / "runs" / run_id / "events.jsonl")


def synced(w: WorkerHandle, run_id: str, epoch: int | None = None) -> bool:
    return any(
        e["event"] == "checkpoint_synced" and (epoch is None or e["epoch"] == epoch)
        for e in events(w, run_id)
    )


def finish(c: ChaosCluster, runs: list[str], timeout_s: float = 90.0):  # type: ignore[no-untyped-def]
    wait_for(
        lambda: all((c.run_statuses() or {}).get(r) == "completed" for r in runs),
        timeout_s,
        "every run to complete",
        detail=lambda: c.run_statuses(),
    )
    c.stop_all_workers()
    report = check_artifacts(c.artifacts(runs))
    assert not report.violations, report.summary()
    assert report.runs_completed == len(runs), report.summary()
    return report


def test_a_duplicate_worker_id_waits_for_the_live_holder(tmp_path: Path) -> None:
    run = "run-000"
    with ChaosCluster(tmp_path, settings()) as c:
        a = c.spawn_worker(run)
        wait_for(lambda: synced(a, run), 30, "the holder to sync a checkpoint")
        dup = chaos_faults.spawn_duplicate(c, a)
        assert dup is not None and dup.worker_id == a.worker_id and dup.volume != a.volume
        wait_for(lambda: "this worker id" in dup.output(), 20, "the copy to be told why it waits", dup.proc)
        wait_for(lambda: synced(a, run, 1) and len(c.watcher.snapshot()) == 1, 5, "the holder to go on alone")
        assert not [e for e in events(a, run) if e["event"] == "fenced"]  # the copy took nothing from it
        c.signal_worker(a, signal.SIGKILL, moment="random")  # the holder dies: the copy takes over
        wait_for(
            lambda: any(e["event"] == "acquired" for e in events(dup, run)), 20, "the copy to take the run"
        )
        report = finish(c, [run])
    assert report.faults == {"duplicate_worker_id": 1}
    assert [e["epoch"] for e in events(dup, run) if e["event"] == "acquired"] == [2]  # its own, fresh volume


def test_the_commander_state_deleted_then_replaced_by_an_older_copy(tmp_path: Path) -> None:
    """The holders ride through the restart (the TTL is long enough for a slow start on a busy machine: a
    restart took 4 to 6 s there) and call in: the new state does not know their leases, so they are fenced,
    and the commander learns their epochs.  It grants nothing for the first TTL after a start on a lost
    state, then goes past them."""
    runs = ["run-000", "run-001"]
    with ChaosCluster(
        tmp_path, settings(runs=2, volumes=6, ttl_s=18.0, safety_margin_s=6.0, max_steps=300)
    ) as c:
        first = [c.spawn_worker(r) for r in runs]
        wait_for(
            lambda: all(synced(w, r) for w, r in zip(first, runs, strict=True)), 30, "both holders to sync"
        )
        backup = chaos_faults.backup_state(c)  # epoch 1 held by the first workers
        chaos_faults.wipe_state(c, "delete", backup)
        # the holders learn on their next renew that the new state does not know their lease: fenced
        wait_for(lambda: all(w.poll() == 3 for w in first), 30, "the first holders to fence themselves")
        second = [c.spawn_worker(r) for r in runs]
        wait_for(
            lambda: all(synced(w, r, 2) for w, r in zip(second, runs, strict=True)),
            60,  # one TTL of no grants, then a trainer's start
            "epoch 2 to train and sync",
        )
        chaos_faults.wipe_state(c, "restore", backup)  # the old copy says: epoch 1, the first workers hold
        wait_for(lambda: all(w.poll() == 3 for w in second), 30, "the second holders to fence themselves")
        third = [c.spawn_worker(r) for r in runs]
        report = finish(c, runs)
        for w, r in zip(third, runs, strict=True):
            mine = [
                e["epoch"] for e in events(w, r) if e["event"] == "acquired" and e["worker_id"] == w.worker_id
            ]
            assert mine == [3]
    assert report.faults == {"state_lost_up/delete": 1, "state_lost_up/restore": 1}
    assert set(report.fenced_by_cause) == {"state_lost"}, report.fenced_by_cause
    log = c.commander.output()
    assert ".lock is there" in log and "this state is behind" in log


def test_slow_clients_on_a_small_machine_fence_nobody(tmp_path: Path) -> None:
    """400 never-finishing connections against a commander allowed 256 open files (the issue: ~1,100
    half-sent requests ran one out of descriptors and every renewal timed out)."""
    runs = ["run-000", "run-001"]
    with ChaosCluster(tmp_path, settings(runs=2, max_steps=300, commander_fd_limit=256)) as c:
        workers = [c.spawn_worker(r) for r in runs]
        wait_for(
            lambda: all(synced(w, r) for w, r in zip(workers, runs, strict=True)), 30, "both holders to sync"
        )
        flood = chaos_faults.SlowFlood(c, 400, 8.0).start(0.0)
        since = time.time()

        def syncs_during_flood() -> bool:  # the holders keep their leases and go on syncing meanwhile
            return all(
                sum(1 for e in events(w, r) if e["event"] == "checkpoint_synced" and e["ts"] > since) >= 3
                for w, r in zip(workers, runs, strict=True)
            )

        wait_for(syncs_during_flood, 60, "three syncs of each run during the flood")
        assert flood.clients is not None and flood.clients.stats.open_peak >= 100  # the flood was on
        stats = flood.stop()
        report = finish(c, runs)
    assert stats["opened"] >= 400, stats
    assert not report.fenced_by_cause, report.fenced_reasons  # no renewal was starved
    assert report.ends == {"completed": 2}, report.summary()
