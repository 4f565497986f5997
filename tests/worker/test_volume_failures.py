"""A pod's volume that fills up or turns read-only under a running worker: one clear message naming it, and
the run handed on for another pod; never a raw OSError or an "internal error" exit.

Real failures, in mount namespaces (relay_testkit/mountns.py): a tiny tmpfs gives the trainer and the
worker ENOSPC from the kernel, a read-only bind mount gives EROFS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay_testkit import mountns
from relay_testkit.workerproc import WorkerProc

pytestmark = pytest.mark.skipif(mountns.unavailable() is not None, reason=f"{mountns.unavailable()}")
TTL = 3.0


def _worker(tmp_path: Path, cmd: Any, run_id: str, **train: Any) -> WorkerProc:
    return WorkerProc(
        tmp_path / "vol",
        commander_url=cmd.url,
        run_id=run_id,
        worker_id="pod",
        train={"max_steps": 400, "save_steps": 10, "step_seconds": 0.03, **train},
    )


def _no_crash(w: WorkerProc) -> None:
    out = w.output()
    assert "internal error" not in out and "--- Logging error ---" not in out, out[-3000:]
    assert "relay/worker" not in out  # no traceback of the worker's own code


def test_a_volume_that_fills_up_ends_the_run_here_with_one_message(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = _worker(tmp_path, cmd, "full", checkpoint_bytes=800_000)  # three kept checkpoints fill 3 MB
    w.start(wrap=lambda argv: mountns.wrapped(argv, w.root, tmpfs_bytes=3 << 20))
    assert w.wait(90) == 4, w.output()[-3000:]
    _no_crash(w)
    detail = cmd.run_detail("full")
    assert "the volume is full: this pod cannot carry the run" in detail["detail"]
    assert "No space left on device" in detail["detail"]  # the trainer's own words follow
    started = [e for e in detail["events"] if e["name"] == "trainer_started"]
    assert len(started) == 1 and "trainer_restarted" not in {e["name"] for e in detail["events"]}
    assert detail["status"] in ("failed", "preempted", "pending")  # another pod may carry it


def test_a_read_only_staging_area_stops_the_trainer_without_restarts(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = _worker(tmp_path, cmd, "rostage")
    staging = w.run_dir() / "ckpt" / "_staging"
    staging.mkdir(parents=True)
    w.start(wrap=lambda argv: mountns.wrapped(argv, staging, readonly=True))
    assert w.wait(90) == 4, w.output()[-3000:]
    _no_crash(w)
    names = [e["event"] for e in w.events()]
    assert names.count("trainer_started") == 1 and names[-1] == "failed", names
    detail = cmd.run_detail("rostage")
    assert f"{staging} is on a read-only filesystem: this pod cannot carry the run" in detail["detail"]
    assert "Read-only file system" in detail["detail"]


def test_a_run_directory_that_cannot_be_created_hands_the_grant_back(
    tmp_path: Path, commander_factory: Any
) -> None:
    """The volume passed the preflight (runs/ is writable) but the run's own directory is read-only."""
    cmd = commander_factory(lease_ttl_s=TTL)
    w = _worker(tmp_path, cmd, "rodir")
    w.run_dir().mkdir(parents=True)
    w.start(wrap=lambda argv: mountns.wrapped(argv, w.run_dir(), readonly=True))
    assert w.wait(60) == 2, w.output()[-3000:]
    _no_crash(w)
    assert f"the volume {w.root} is read-only: creating the run's directory" in w.output()
    detail = cmd.run_detail("rodir")
    assert detail["status"] == "preempted" and detail["holder"] is None  # the run is not at fault
    assert "is read-only" in detail["detail"]
