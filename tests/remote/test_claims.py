"""Storage-side fencing by claims, against both backends (filesystem and the Hub look-alike).

A new lease holder records its epoch on the remote (``Remote.claim``) before it trains. From then on
every push or prune from an older epoch is refused at the moment it would publish -- including a push
that was already uploading when the claim landed (the "late upload") -- and state.json says
"claimed at epoch E" even before the holder has a checkpoint of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from relay.ckpt import RunLayout
from relay.remote import (
    FilesystemRemote,
    RemoteAheadError,
    RemoteCorruptError,
    RemoteError,
    RemoteFencedError,
    RemoteState,
)
from relay_testkit.wait import wait_for
from tests.ckpt.util import REPO_ROOT, default_files, make_committed
from tests.remote.conftest import REPO, Backend

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _state_doc(backend: Backend, tmp_path: Path) -> dict:
    if backend.hub is not None:
        return json.loads(backend.hub.files(REPO)["run1/relay/state.json"])
    return json.loads((tmp_path / "remote" / "run1" / "relay" / "state.json").read_bytes())


def test_a_claim_on_an_empty_remote_says_claimed_with_no_checkpoint(backend: Backend, tmp_path: Path) -> None:
    remote = backend.make()
    state = remote.claim(4, lease_id="lease-4")
    assert (state.epoch, state.step, state.claimed_by) == (4, None, "lease-4") and state.revision
    doc = _state_doc(backend, tmp_path)
    assert doc["format_version"] == 2 and doc["epoch"] == 4 and doc["claimed_by"] == "lease-4"
    assert doc["step"] is None and doc["manifest_sha256"] is None and doc["step_epoch"] is None
    assert remote.state() == state
    assert remote.pull_newest(RunLayout(tmp_path / "pod", "run1")) is None  # nothing to resume from
    assert remote.claim(4, lease_id="lease-4") == state  # the same lease again: already done


def test_a_claim_keeps_the_checkpoint_and_fences_every_older_epoch(backend: Backend, tmp_path: Path) -> None:
    old = RunLayout(tmp_path / "old", "run1")
    remote = backend.make()
    ckpt10 = make_committed(old, 10)
    remote.push(ckpt10, epoch=1)
    claimed = backend.make().claim(2, lease_id="lease-2")
    assert (claimed.epoch, claimed.step, claimed.step_epoch) == (2, 10, 1)
    assert claimed.manifest_sha256 == ckpt10.manifest_sha256

    with pytest.raises(RemoteFencedError) as info:  # the old holder, still pushing, is refused...
        remote.push(make_committed(old, 20), epoch=1)
    assert info.value.remote_epoch == 2 and "step 10" in str(info.value)
    with pytest.raises(RemoteFencedError):  # ... and cannot prune either
        remote.prune(1, epoch=1)
    assert remote.state() == claimed and remote.list_steps() == [10]
    assert remote.pull_newest(RunLayout(tmp_path / "new", "run1")).step == 10  # what was published before

    # the new holder publishes under its claim: state.json keeps saying who claimed the epoch
    result = backend.make().push(make_committed(RunLayout(tmp_path / "new", "run1"), 15, epoch=2), epoch=2)
    after = remote.state()
    assert not result.noop and (after.epoch, after.step, after.step_epoch, after.claimed_by) == (
        2,
        15,
        2,
        "lease-2",
    )


def test_a_remote_at_or_above_the_lease_epoch_refuses_the_claim(backend: Backend, tmp_path: Path) -> None:
    remote = backend.make()
    remote.push(make_committed(RunLayout(tmp_path / "a", "run1"), 10), epoch=7)
    for epoch, lease in ((5, "lease-5"), (7, "lease-7")):  # an older epoch; the same one, never claimed by us
        with pytest.raises(RemoteAheadError) as info:
            remote.claim(epoch, lease_id=lease)
        assert info.value.remote_epoch == 7 and info.value.lease_epoch == epoch and not info.value.retryable
        assert "at or above this lease's epoch" in str(info.value)
    remote.claim(8, lease_id="lease-8")
    with pytest.raises(RemoteAheadError):  # epoch 8 claimed by another lease (two holders of one epoch)
        remote.claim(8, lease_id="impostor")
    assert remote.state().claimed_by == "lease-8"


def test_a_claim_drops_a_fenced_writers_leftovers_in_the_same_commit(
    backend: Backend, tmp_path: Path
) -> None:
    remote = backend.make()
    remote.push(make_committed(RunLayout(tmp_path / "a", "run1"), 10), epoch=1)
    for rel, data in default_files(99).items():  # uploaded, never named by state.json
        backend.plant(99, rel, data)
    assert remote.list_steps() == [99, 10]
    if backend.hub is not None:
        backend.hub.reset_stats()
    remote.claim(2, lease_id="lease-2")
    assert remote.list_steps() == [10]
    if backend.hub is not None:
        assert backend.hub.stats.commits == 1


def test_a_late_upload_resumed_after_a_newer_claim_is_refused(backend: Backend, tmp_path: Path) -> None:
    """A push already uploading when its worker stalled finishes after the next holder claimed the remote:
    refused where it would publish (the Hub: parent_commit; file://: the check under the publish lock),
    and the newest on the remote is still what the new holder claimed."""
    stale_layout = RunLayout(tmp_path / "stale", "run1")
    remote = backend.make()
    remote.push(make_committed(stale_layout, 10), epoch=1)
    late = make_committed(stale_layout, 20)
    uploading, resume = threading.Event(), threading.Event()

    def stall_once(phase: str) -> None:
        if phase in ("copy_chunk", "lfs_upload") and not uploading.is_set():
            uploading.set()
            assert resume.wait(20)

    if backend.hub is not None:
        backend.hub.on_request = stall_once
    else:
        from relay.remote import filesystem as F

        F.PHASE_HOOK = stall_once
    outcome: list[BaseException | object] = []
    pusher = threading.Thread(target=lambda: outcome.append(_try(lambda: remote.push(late, epoch=1))))
    try:
        pusher.start()
        assert uploading.wait(20), "the push never started uploading"
        claimed = backend.make().claim(2, lease_id="lease-2")  # the next holder, before it trains
        resume.set()
        pusher.join(30)
    finally:
        resume.set()
        if backend.hub is not None:
            backend.hub.on_request = None
        else:
            F.PHASE_HOOK = None
    assert isinstance(outcome[0], RemoteFencedError), outcome
    state = remote.state()
    assert (state.epoch, state.step, state.claimed_by) == (2, 10, "lease-2") and state == claimed
    assert remote.list_steps() == [10]
    assert remote.pull_newest(RunLayout(tmp_path / "next", "run1")).step == 10


def _try(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        return exc


def test_state_documents_old_and_new_are_read_and_bad_ones_named() -> None:
    v1 = json.dumps({"format_version": 1, "run_id": "r", "step": 5, "epoch": 3, "manifest_sha256": "a" * 64})
    state, _ = RemoteState.from_json_bytes(v1.encode(), origin="o")
    assert (state.epoch, state.step, state.step_epoch, state.claimed_by) == (3, 5, 3, None)
    claimed = RemoteState("r", 9, None, None, None, "l9")
    assert RemoteState.from_json_bytes(claimed.to_json_bytes(), origin="o")[0].step is None
    bad = {
        "poisoned past int64": {"epoch": 2**64},
        "step without manifest": {"step": 3, "manifest_sha256": None, "step_epoch": 1},
        "step_epoch above epoch": {"step": 3, "manifest_sha256": "b" * 64, "step_epoch": 99},
        "unknown format": {"format_version": 7},
    }
    for why, change in bad.items():
        doc = {
            "format_version": 2,
            "run_id": "r",
            "epoch": 9,
            "step": None,
            "manifest_sha256": None,
            **change,
        }
        with pytest.raises(RemoteCorruptError):
            RemoteState.from_json_bytes(json.dumps(doc).encode(), origin=why)


STOPPED_IN_PUBLISH = """
import os, signal, sys
from pathlib import Path
from relay.ckpt import read_committed
from relay.remote import filesystem as F, open_remote
def hook(phase):
    if phase == "before_publish":  # holding the publish lock, its check of state.json done
        Path(sys.argv[3]).touch()
        os.kill(os.getpid(), signal.SIGSTOP)
F.PHASE_HOOK = hook
open_remote(sys.argv[1], "run1").push(read_committed(Path(sys.argv[2])), epoch=1)
"""


def test_a_stopped_holder_of_the_publish_lock_delays_the_claim_and_is_named(tmp_path: Path) -> None:
    """A worker SIGSTOPped inside its publish keeps the file:// lock: the next holder's claim waits (a
    bounded wait), then fails retryably naming the holder; once the holder resumes, its publish (decided
    before any claim) lands first and the claim comes after it: never an older publish after a claim."""
    url = f"file://{tmp_path / 'remote'}"
    ckpt = make_committed(RunLayout(tmp_path / "old", "run1"), 5)
    marker = tmp_path / "publishing"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED_IN_PUBLISH, url, str(ckpt.path), str(marker)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        wait_for(marker.exists, 30, "the old holder to stop inside its publish", proc=proc)
        with pytest.raises(RemoteError) as info:
            FilesystemRemote(tmp_path / "remote", "run1", lock_timeout_s=0.5).claim(2, lease_id="lease-2")
        text = str(info.value)
        assert info.value.retryable and f"pid {proc.pid} on " in text and "push of step 5 at epoch 1" in text
        assert "stopped in the middle of a publish" in text
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(30) == 0
    claimed = FilesystemRemote(tmp_path / "remote", "run1").claim(2, lease_id="lease-2")
    assert (claimed.epoch, claimed.step, claimed.step_epoch) == (2, 5, 1)
