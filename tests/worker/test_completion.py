"""``completed`` means the final checkpoint is committed, and on the remote when there is one.

A trainer that exits 0 is not enough: a run whose checkpoint commits all failed, or whose final
checkpoint never reached its remote, ends ``failed`` and says why, and every commit failure is an event
that ``relayctl status`` and ``relayctl logs`` show.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from relay_testkit.workerproc import REPO_ROOT, WorkerProc

TTL = 3.0


def relayctl(cmd: Any, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", *args, "--commander-url", cmd.url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_run_whose_commits_all_fail_ends_failed_and_every_failure_is_shown(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="nocommit",
        worker_id="pod",
        train={"max_steps": 10, "save_steps": 5, "step_seconds": 0.02, "symlink_in_checkpoint": True},
    ).start()
    assert w.wait(60) == 4, w.output()
    events = w.events()
    failures = [e for e in events if e["event"] == "checkpoint_commit_failed"]
    assert len(failures) == 2 and all("is a symlink" in e["message"] for e in failures), failures
    assert events[-1]["event"] == "failed" and "checkpoint_committed" not in [e["event"] for e in events]
    detail = cmd.run_detail("nocommit")
    assert detail["status"] == "failed", detail["detail"]  # a checkpoint no pod can commit: not queued again
    assert "finished at step 10 but its final checkpoint was not committed" in detail["detail"]
    assert "is a symlink" in detail["detail"] and detail["restarts"] == 0
    assert "checkpoint_commit_failed" in {e["name"] for e in detail["events"]}
    assert "checkpoint_commit_failed" in relayctl(cmd, "status", "nocommit")
    assert "checkpoint commit failed" in relayctl(cmd, "logs", "nocommit")


def test_a_final_checkpoint_that_never_reaches_the_remote_is_not_completed(
    tmp_path: Path, commander_factory: Any
) -> None:
    """The remote refuses every upload (its staging directory is a symbolic link: refused, never
    followed); the trainer finishes; the run is released failed, naming the remote and why."""
    remote = tmp_path / "remote"
    (remote / "unsynced" / "relay").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (remote / "unsynced" / "relay" / "tmp").symlink_to(tmp_path / "elsewhere")
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="unsynced",
        worker_id="pod",
        remote=f"file://{remote}",
        train={"max_steps": 10, "save_steps": 5, "step_seconds": 0.02},
    ).start()
    assert w.wait(60) == 4, w.output()
    names = [e["event"] for e in w.events()]
    assert "checkpoint_committed" in names and "sync_failed" in names and "checkpoint_synced" not in names
    detail = cmd.run_detail("unsynced")
    assert detail["status"] in ("failed", "preempted"), detail  # the commander may queue it again
    assert "final checkpoint is committed on this volume, but it is not on the remote" in detail["detail"]
    assert "is a symbolic link" in detail["detail"]
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_run_resumed_at_its_final_step_completes_without_waiting_for_a_sync(
    tmp_path: Path, commander_factory: Any
) -> None:
    """The remote already holds the final checkpoint (a pod finished and synced it, then lost its lease
    before releasing; here: the run carried to its end under another commander): the next holder's
    trainer finishes at once, and the run is completed, not held for an upload that has nothing to send
    (found by the chaos soak: such runs waited out final_sync_timeout_s and ended failed)."""
    remote = f"file://{tmp_path / 'remote'}"
    train = {"max_steps": 20, "save_steps": 5, "step_seconds": 0.01}
    first = commander_factory(lease_ttl_s=TTL)
    a = WorkerProc(
        tmp_path / "a", commander_url=first.url, run_id="fin", worker_id="a", remote=remote, train=train
    )
    assert a.start().wait(60) == 0, a.output()
    second = commander_factory(lease_ttl_s=TTL)  # knows nothing of the run: grants past the remote's epoch
    b = WorkerProc(
        tmp_path / "b",
        commander_url=second.url,
        run_id="fin",
        worker_id="b",
        remote=remote,
        train=train,
        settings={"final_sync_timeout_s": 5},
    )
    assert b.start().wait(60) == 0, b.output()
    resumed = [e for e in b.events() if e["event"] == "resumed"]
    assert resumed and resumed[-1]["step"] == 20 and resumed[-1]["source"] == "remote", resumed
    detail = second.run_detail("fin")
    assert detail["status"] == "completed", detail["detail"]
