"""The Remote contract, run against both backends (filesystem and the Hub look-alike)."""

import json
import os
import shutil
from pathlib import Path

import pytest

from relay.ckpt import RunLayout, read_latest_step, verify_checkpoint
from relay.remote import RemoteCorruptError, RemoteError, RemoteFencedError
from relay.remote.base import PullReport
from tests.ckpt.util import default_files, make_committed
from tests.remote.conftest import Backend

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _layouts(tmp_path: Path) -> tuple[RunLayout, RunLayout]:
    return RunLayout(tmp_path / "pod-a", "run1"), RunLayout(tmp_path / "pod-b", "run1")


def test_push_then_pull_on_another_pod(backend: Backend, tmp_path: Path) -> None:
    a, b = _layouts(tmp_path)
    remote = backend.make()
    assert remote.state() is None and remote.pull_newest(b) is None
    ckpt = make_committed(a, 10, epoch=3)
    result = remote.push(ckpt, epoch=3)
    assert (result.step, result.noop, result.files_sent) == (10, False, 5)
    assert result.bytes_sent == ckpt.total_bytes

    state = remote.state()
    assert (state.run_id, state.step, state.epoch, state.manifest_sha256) == (
        "run1",
        10,
        3,
        ckpt.manifest_sha256,
    )
    assert state.revision == result.revision

    pulled = backend.make().pull_newest(b)
    assert pulled.step == 10 and pulled.manifest_sha256 == ckpt.manifest_sha256
    assert pulled.path == b.step_dir(10) and read_latest_step(b) == 10
    assert verify_checkpoint(pulled.path, expected_run_id="run1").ok
    assert list(b.incoming_dir.iterdir()) == []


def test_unchanged_files_are_not_sent_again(backend: Backend, tmp_path: Path) -> None:
    a, _ = _layouts(tmp_path)
    remote = backend.make()
    first = default_files(10)
    remote.push(make_committed(a, 10, first), epoch=1)
    if backend.hub:
        backend.hub.reset_stats()

    second = dict(
        first, **{"model.safetensors": os.urandom(200_000), "trainer_state.json": b'{"global_step": 20}'}
    )
    ckpt = make_committed(a, 20, second)
    result = remote.push(ckpt, epoch=1)
    changed = len(second["model.safetensors"]) + len(second["trainer_state.json"])
    assert (result.files_sent, result.files_skipped, result.bytes_sent) == (2, 3, changed)

    if backend.hub:  # what actually crossed the wire: the two changed files + the new manifest
        stats = backend.hub.stats
        manifest_size = (ckpt.path / "manifest.json").stat().st_size
        assert sorted(n for _oid, n in stats.uploaded_oids) == sorted(
            [len(second["model.safetensors"]), len(second["trainer_state.json"]), manifest_size]
        )
        assert [p for p, _n in stats.inline_files if "checkpoints" in p] == [
            "run1/checkpoints/step_00000020/COMPLETE"
        ]
        assert stats.commits == 1
    else:  # the filesystem remote hard-links what it already holds
        root = tmp_path / "remote" / "run1" / "checkpoints"
        assert (root / "step_00000010" / "config.json").stat().st_ino == (
            root / "step_00000020" / "config.json"
        ).stat().st_ino

    again = remote.push(ckpt, epoch=1)
    assert again.noop and again.bytes_sent == 0 and "same manifest" in again.detail


def test_stale_epoch_push_is_refused(backend: Backend, tmp_path: Path) -> None:
    a, _ = _layouts(tmp_path)
    remote = backend.make()
    remote.push(make_committed(a, 10), epoch=5)
    before = remote.state()
    zombie = make_committed(a, 20)
    with pytest.raises(RemoteFencedError) as info:
        remote.push(zombie, epoch=4)
    assert info.value.remote_epoch == 5 and info.value.push_epoch == 4 and not info.value.retryable
    assert "epoch 5" in str(info.value)
    after = remote.state()
    assert (after.step, after.epoch, after.manifest_sha256) == (
        before.step,
        before.epoch,
        before.manifest_sha256,
    )
    assert remote.list_steps() == [10]


def test_same_epoch_older_step_is_a_noop(backend: Backend, tmp_path: Path) -> None:
    a, _ = _layouts(tmp_path)
    remote = backend.make()
    old = make_committed(a, 10)
    remote.push(make_committed(a, 20), epoch=2)
    result = remote.push(old, epoch=2)
    assert result.noop and "step 20" in result.detail
    assert remote.state().step == 20


def test_newer_epoch_resuming_from_older_step_supersedes_the_fenced_branch(
    backend: Backend, tmp_path: Path
) -> None:
    a, b = _layouts(tmp_path)
    remote = backend.make()
    remote.push(make_committed(a, 10), epoch=1)
    remote.push(make_committed(a, 20), epoch=1)
    # epoch 2 resumed from step 10 elsewhere and publishes step 15
    ckpt15 = make_committed(b, 15)
    remote.push(ckpt15, epoch=2)
    assert remote.state().step == 15 and remote.state().epoch == 2
    assert remote.list_steps() == [15, 10]


def test_pull_skips_checkpoints_newer_than_state(backend: Backend, tmp_path: Path) -> None:
    a, b = _layouts(tmp_path)
    remote = backend.make()
    remote.push(make_committed(a, 10), epoch=1)
    for rel, data in default_files(99).items():  # a leftover a fenced writer could have left
        backend.plant(99, rel, data)
    report = PullReport()
    pulled = remote.pull_newest(b, report=report)
    assert pulled.step == 10
    assert [s.code for s in report.skipped] == ["superseded"]


def test_corrupt_newest_is_skipped_and_never_silently_replaced_by_local(
    backend: Backend, tmp_path: Path
) -> None:
    a, b = _layouts(tmp_path)
    remote = backend.make()
    remote.push(make_committed(a, 10), epoch=1)
    remote.push(make_committed(a, 20), epoch=1)
    backend.corrupt(20, "model.safetensors")
    report = PullReport()
    pulled = remote.pull_newest(b, report=report)
    assert pulled.step == 10
    [skip] = report.skipped
    assert skip.code == "hash_mismatch" and "step_00000020" in str(skip.path)

    # Only corrupt checkpoints left: a typed error, never a silent fallback to local files.
    backend.corrupt(10, "model.safetensors")
    c = RunLayout(tmp_path / "pod-c", "run1")
    make_committed(c, 5)
    with pytest.raises(RemoteCorruptError) as info:
        remote.pull_newest(c)
    assert "no remote checkpoint" in str(info.value) and "step_00000010" in str(info.value)
    assert read_latest_step(c) == 5 and not c.step_dir(10).exists()


def test_pull_reuses_an_identical_local_checkpoint(backend: Backend, tmp_path: Path) -> None:
    a, _ = _layouts(tmp_path)
    remote = backend.make()
    ckpt = make_committed(a, 10)
    remote.push(ckpt, epoch=1)
    report = PullReport()
    pulled = remote.pull_newest(a, report=report)
    assert pulled.path == ckpt.path and report.reused_local and report.bytes_received == 0


def test_hostile_remote_manifest_is_skipped(backend: Backend, tmp_path: Path) -> None:
    a, b = _layouts(tmp_path)
    remote = backend.make()
    remote.push(make_committed(a, 10), epoch=1)
    evil = {
        "format_version": 1, "run_id": "run1", "step": 11, "epoch": 1, "created_at": "x",
        "files": [{"path": "../../../escape.txt", "size": 1, "sha256": "0" * 64}],
    }  # fmt: skip
    backend.plant(11, "manifest.json", json.dumps(evil).encode())
    backend.delete_state()  # no state.json: every step is a candidate, newest first
    report = PullReport()
    pulled = remote.pull_newest(b, report=report)
    assert pulled.step == 10
    assert [s.code for s in report.skipped] == ["bad_manifest"]
    assert not list(tmp_path.rglob("escape.txt"))


def test_prune_keeps_newest_and_state_step(backend: Backend, tmp_path: Path) -> None:
    a, _ = _layouts(tmp_path)
    remote = backend.make()
    for step in (10, 20, 30, 40):
        remote.push(make_committed(a, step), epoch=1)
    assert remote.prune(2) == [10, 20]
    assert remote.list_steps() == [40, 30]
    assert remote.prune(2) == []
    assert remote.state().step == 40


def test_push_of_a_locally_corrupted_file_is_refused(backend: Backend, tmp_path: Path) -> None:
    a, _ = _layouts(tmp_path)
    remote = backend.make()
    ckpt = make_committed(a, 10)
    p = ckpt.path / "model.safetensors"
    p.write_bytes(b"\0" * p.stat().st_size)
    with pytest.raises(RemoteError) as info:
        remote.push(ckpt, epoch=1)
    assert "corrupt" in str(info.value) and not info.value.retryable
    assert remote.state() is None


def test_push_of_a_pruned_checkpoint_is_not_retried(backend: Backend, tmp_path: Path) -> None:
    a, _ = _layouts(tmp_path)
    remote = backend.make()
    half = make_committed(a, 10)
    (half.path / "config.json").unlink()  # pruned while the push was starting
    gone = make_committed(a, 20)
    shutil.rmtree(gone.path)
    for ckpt in (half, gone):
        with pytest.raises(RemoteError) as info:
            remote.push(ckpt, epoch=1)
        assert not info.value.retryable and str(ckpt.path) in str(info.value)
    assert remote.state() is None
