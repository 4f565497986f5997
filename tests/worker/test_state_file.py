"""runs/<run_id>/state.json: the volume's view of who last carried a run and where it stood."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from relay.worker.state_file import StateFile
from relay_testkit.leases import make_lease
from relay_testkit.workerproc import WorkerProc

TTL = 3.0
FIELDS = {
    "run_id",
    "worker_id",
    "epoch",
    "state",
    "step",
    "committed_step",
    "synced_step",
    "remote",
    "outcome",
    "updated_at",
    "pid",
}


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def wait_state(path: Path, pred: Any, timeout: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    doc = None
    while time.monotonic() < end:
        doc = read_state(path)  # never torn: a JSONDecodeError here fails the test
        if doc is not None and pred(doc):
            return doc
        time.sleep(0.02)
    raise AssertionError(f"state.json never matched; last: {doc}")


def test_writes_are_whole_newest_wins_and_never_replace_a_newer_epoch(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    sf = StateFile(path, make_lease("r", "w1", epoch=2), remote=None)
    for step in range(50):
        sf.update(state="supervising", step=step, committed_step=None, synced_step=None)
    assert sf.flush(5.0)
    doc = read_state(path)
    assert doc is not None and set(doc) == FIELDS
    assert (doc["epoch"], doc["state"], doc["step"], doc["outcome"]) == (2, "supervising", 49, None)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind

    stale = StateFile(path, make_lease("r", "w0", epoch=1), remote=None)  # a fenced predecessor
    stale.update(state="fenced", step=7, committed_step=None, synced_step=None)
    assert stale.flush(5.0)
    assert read_state(path)["worker_id"] == "w1"  # type: ignore[index]

    path.write_text("{torn", encoding="utf-8")  # unreadable: replaced, never trusted
    sf.update(state="done", step=50, committed_step=50, synced_step=None, outcome="completed")
    sf.close()
    assert sf.flush(5.0)
    assert read_state(path)["outcome"] == "completed"  # type: ignore[index]
    sf.update(state="supervising", step=51, committed_step=50, synced_step=None)  # after close: dropped
    assert sf.flush(1.0) and read_state(path)["step"] == 50  # type: ignore[index]


def test_state_json_after_a_preemption_and_after_completion(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    remote = f"file://{tmp_path / 'remote'}"
    train = {"max_steps": 40, "save_steps": 10, "step_seconds": 0.03}
    root = tmp_path / "volume"  # both workers share one volume: the file shows who carried the run last
    a = WorkerProc(root, commander_url=cmd.url, run_id="st", worker_id="pod-a", remote=remote, train=train)
    state_file = a.run_dir() / "state.json"
    a.start()
    # written on commits and syncs too, not only on transitions: a synced step while still supervising
    during = wait_state(state_file, lambda d: d["state"] == "supervising" and d["synced_step"] is not None)
    assert (during["worker_id"], during["epoch"], during["pid"]) == ("pod-a", 1, a.pid)
    assert during["committed_step"] >= during["synced_step"] >= 10 and during["outcome"] is None
    a.send(signal.SIGTERM)
    assert a.wait(30) == 0, a.output()
    preempted = a.events()[-1]
    assert preempted["event"] == "preempted"
    final = preempted["checkpoint_step"]
    doc = read_state(state_file)
    assert doc is not None and set(doc) == FIELDS
    assert doc == {
        **doc,
        "run_id": "st",
        "worker_id": "pod-a",
        "epoch": 1,
        "state": "done",
        "outcome": "preempted",
        "committed_step": final,
        "synced_step": final,
        "remote": remote,
        "pid": a.pid,
    }
    assert doc["step"] >= final and doc["updated_at"] >= preempted["ts"]

    b = WorkerProc(root, commander_url=cmd.url, run_id="st", worker_id="pod-b", remote=remote, train=train)
    b.start()
    assert b.wait(60) == 0, b.output()
    assert b.events()[-1]["event"] == "completed"
    done = read_state(state_file)
    assert done is not None
    assert {k: done[k] for k in FIELDS - {"updated_at"}} == {
        "run_id": "st",
        "worker_id": "pod-b",
        "epoch": 2,
        "state": "done",
        "outcome": "completed",
        "step": 40,
        "committed_step": 40,
        "synced_step": 40,
        "remote": remote,
        "pid": b.pid,
    }
    assert done["updated_at"] > doc["updated_at"]
