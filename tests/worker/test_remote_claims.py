"""The worker's side of storage fencing: a new holder claims the remote before its trainer starts.

- A push that was in flight when its worker stalled (SIGSTOP mid-upload) and resumes after the next
  holder's claim is refused where it would publish: the remote's newest stays the new holder's.
- A remote already at or above the granted epoch (a commander that lost its state, or a poisoned
  ``relay/state.json``) is reported with the release (``remote_epoch``) and never trained on; a
  commander that does not jump past it ends the run with a clear status instead of a loop.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from relay.remote import open_remote
from relay_testkit.wait import wait_for
from relay_testkit.workerproc import REPO_ROOT, WorkerProc

TTL = 3.0
FAULTS = REPO_ROOT / "relay_testkit" / "worker_faults"
TRAIN = {"max_steps": 2000, "save_steps": 20, "step_seconds": 0.03}


def names(w: WorkerProc) -> list[str]:
    return [e["event"] for e in w.events()]


def test_an_upload_resumed_after_the_next_holders_claim_is_refused(
    tmp_path: Path, commander_factory: Any
) -> None:
    remote_url = f"file://{tmp_path / 'remote'}"
    marker = tmp_path / "uploading"
    cmd = commander_factory(lease_ttl_s=TTL)
    # A's first push pauses for a second once staged, before it takes the publish lock: the test stops A there
    slow = {
        "PYTHONPATH": f"{FAULTS}:{REPO_ROOT}",
        "RELAY_FAULT_SLOW_UPLOAD_S": "1.0",
        "RELAY_FAULT_UPLOAD_PHASE": "staged",
    }
    a = WorkerProc(
        tmp_path / "pod-a",
        commander_url=cmd.url,
        run_id="late",
        worker_id="pod-a",
        remote=remote_url,
        train=TRAIN,
        env={**slow, "RELAY_FAULT_UPLOADING": str(marker)},
    ).start()
    wait_for(marker.exists, 30, "A's first upload to be about to publish")
    os.kill(a.pid, signal.SIGSTOP)  # stalled mid-upload: its trainer dies by the guard, the push waits
    try:
        b = WorkerProc(
            tmp_path / "pod-b",
            commander_url=cmd.url,
            run_id="late",
            worker_id="pod-b",
            remote=remote_url,
            train=TRAIN,
        ).start()
        b.wait_event("resumed", timeout=30)
        order = names(b)
        assert order[:3] == ["acquired", "remote_claimed", "resumed"], order  # claimed before anything trains
        claimed = open_remote(remote_url, "late").state()
        assert claimed is not None and claimed.epoch == 2 and claimed.step is None  # A never published
    finally:
        os.kill(a.pid, signal.SIGCONT)  # A's push goes on to publish under epoch 1, as A fences itself
    assert a.wait(60) == 3, a.output()
    assert "checkpoint_synced" not in names(a)  # refused where it would publish (or gone with its process)
    b.wait_event("checkpoint_synced", timeout=30)
    state = open_remote(remote_url, "late").state()
    assert state is not None and (state.epoch, state.step_epoch) == (2, 2), state
    b.send(signal.SIGTERM)
    assert b.wait(30) == 0, b.output()


def test_a_poisoned_remote_epoch_ends_the_run_with_its_reason_instead_of_a_loop(
    tmp_path: Path, commander_factory: Any
) -> None:
    poisoned = 2**62
    relay_dir = tmp_path / "remote" / "poison" / "relay"
    relay_dir.mkdir(parents=True)
    doc = {"format_version": 2, "run_id": "poison", "epoch": poisoned, "step": None, "manifest_sha256": None}
    (relay_dir / "state.json").write_text(json.dumps(doc))
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="poison",
        worker_id="pod",
        remote=f"file://{tmp_path / 'remote'}",
        train=TRAIN,
    ).start()
    started = time.monotonic()
    assert w.wait(60) == 4, w.output()
    assert time.monotonic() - started < 30
    events = w.events()
    ahead = next(e for e in events if e["event"] == "remote_ahead")
    assert ahead["remote_epoch"] == poisoned and ahead["epoch"] == 1
    release = next(e for e in events if e["event"] == "preempted")
    assert release["remote_epoch"] == poisoned and release["released"] is True  # sent with the release
    assert "trainer_started" not in names(w) and not (w.run_dir() / "mock_steps.jsonl").exists()
    detail = cmd.run_detail("poison")
    assert detail["status"] == "failed" and str(poisoned) in detail["detail"], detail["detail"]
    assert "remote_ahead" in {e["name"] for e in detail["events"]}
    assert json.loads((relay_dir / "state.json").read_text())["epoch"] == poisoned  # never written


def test_a_remote_ahead_of_a_commander_that_lost_its_state_is_jumped_past(
    tmp_path: Path, commander_factory: Any
) -> None:
    """The remote already holds epoch 5 (a commander restarted on an empty state grants 1): the worker
    reports it with the release, the commander's next grant jumps past it, and the run trains there."""
    relay_dir = tmp_path / "remote" / "lost" / "relay"
    relay_dir.mkdir(parents=True)
    doc = {"format_version": 2, "run_id": "lost", "epoch": 5, "step": None, "manifest_sha256": None}
    (relay_dir / "state.json").write_text(json.dumps(doc))
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="lost",
        worker_id="pod",
        remote=f"file://{tmp_path / 'remote'}",
        train={"max_steps": 20, "save_steps": 5, "step_seconds": 0.02},
    ).start()
    assert w.wait(90) == 0, w.output()
    grants = [e["epoch"] for e in w.events() if e["event"] == "acquired"]
    assert grants[0] == 1 and grants[-1] == 6, grants
    assert cmd.run_detail("lost")["status"] == "completed"
    state = open_remote(f"file://{tmp_path / 'remote'}", "lost").state()
    assert state is not None and (state.epoch, state.step) == (6, 20)
