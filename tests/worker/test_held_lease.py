"""A worker id names one incarnation (issue 13, point 3), worker side: the lease a worker process holds is
kept on its volume (``runs/<run>/lease.json``, under a flock), shown by its restart to take the lease back
at once, and never shown by a second live process with the same id."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from relay.worker.held_lease import HeldLeases
from relay_testkit.leases import make_lease
from relay_testkit.wait import wait_for
from relay_testkit.workerproc import WorkerProc
from tests.worker.test_e2e import run_detail


def test_kept_lease_is_shown_by_the_next_process_and_dropped_at_the_end(tmp_path: Path) -> None:
    first = HeldLeases(tmp_path, "w1")
    lease = make_lease("r1", "w1", lease_id="abc", epoch=4)
    assert first.claim("r1") is None  # nothing held yet
    first.keep(lease)
    doc = json.loads((tmp_path / "runs" / "r1" / "lease.json").read_text())
    assert (doc["worker_id"], doc["lease_id"], doc["epoch"]) == ("w1", "abc", 4)
    # a second live process with the same id on this volume: the lock is taken, it shows nothing
    second = HeldLeases(tmp_path, "w1")
    assert second.claim("r1") is None
    assert second.find() == "r1"  # it sees the file, but claiming it is what counts
    first.close()  # the first process is gone (its flock with it): the proof is the next one's
    proof = second.claim("r1")
    assert proof is not None and (proof.lease_id, proof.epoch) == ("abc", 4)
    second.drop("r1")
    assert not (tmp_path / "runs" / "r1" / "lease.json").exists()
    assert HeldLeases(tmp_path, "w1").find() is None


def test_another_worker_ids_file_and_an_unreadable_one_prove_nothing(tmp_path: Path) -> None:
    other = HeldLeases(tmp_path, "someone-else")
    other.keep(make_lease("r1", "someone-else"))
    other.close()
    mine = HeldLeases(tmp_path, "w1")
    assert mine.find() is None and mine.claim("r1") is None
    mine.close()
    (tmp_path / "runs" / "r2").mkdir(parents=True)
    (tmp_path / "runs" / "r2" / "lease.json").write_text("{not json")
    assert HeldLeases(tmp_path, "w1").claim("r2") is None


def test_a_volume_that_cannot_hold_the_file_is_said_once_and_changes_nothing_else(
    tmp_path: Path, caplog: Any
) -> None:
    (tmp_path / "runs").write_text("a file where the runs directory should be")
    held = HeldLeases(tmp_path, "w1")
    held.keep(make_lease("r1", "w1"))  # no exception: a restart will just wait for expiry
    assert held.claim("r1") is None
    held.drop("r1")
    assert "cannot open" in caplog.text


def _worker(root: Path, url: str, worker_id: str = "pod-a") -> WorkerProc:
    return WorkerProc(
        root,
        commander_url=url,
        run_id="held",
        worker_id=worker_id,
        train={"max_steps": 100_000, "save_steps": 20, "step_seconds": 0.05},
        settings={"renew_safety_margin_s": 2.0},
    )


def test_a_killed_worker_restarted_on_its_volume_takes_its_lease_back_at_once(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=60.0)  # expiry is a minute away: only the proof can explain a grant
    first = _worker(tmp_path / "pod", cmd.url).start()
    first.wait_event("trainer_started")
    assert json.loads((first.run_dir() / "lease.json").read_text())["epoch"] == 1
    first.send(signal.SIGKILL)
    first.wait(10)
    again = _worker(tmp_path / "pod", cmd.url).start()
    try:
        again.wait_event("trainer_started", pred=lambda e: e.get("epoch") == 2)
        detail = run_detail(cmd, "held")
        assert [(lease["epoch"], lease["ended"]) for lease in detail["leases"]] == [
            (1, "fenced"),
            (2, "running"),
        ]
        grant = [e for e in detail["events"] if e["name"] == "acquired"][-1]
        assert "showed the lease of epoch 1" in grant["message"], grant
        assert json.loads((again.run_dir() / "lease.json").read_text())["epoch"] == 2
        # a copy of the same WORKER_ID on another volume waits: the id alone takes nothing
        copy = _worker(tmp_path / "other-pod", cmd.url).start()
        wait_for(lambda: "this worker id" in copy.output(), 20, "the copy to be told why it waits")
        assert run_detail(cmd, "held")["epoch"] == 2
        copy.send(signal.SIGTERM)
        assert copy.wait(20) == 0, copy.output()
        again.send(signal.SIGTERM)
        assert again.wait(30) == 0, again.output()
        assert not (again.run_dir() / "lease.json").exists()  # released: nothing left to show
    finally:
        for w in (first, again):
            w.kill()
