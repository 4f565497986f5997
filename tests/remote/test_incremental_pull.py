"""A pull fetches only the files the volume lacks (``relay.ckpt.reuse``), on both backends: the rest are
linked from checkpoints already there, and the copy still verifies whole; a reused file that rotted on
the volume costs one full download, never a bad checkpoint; a cancelled pull leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.ckpt import RunLayout, read_latest_step, verify_checkpoint
from relay.ckpt.manifest import read_manifest
from relay.remote.base import PullCancelled, PullReport
from tests.ckpt.util import default_files, make_committed
from tests.remote.conftest import Backend

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _changed(old: Path, new: Path) -> dict[str, int]:
    """Files of checkpoint ``new`` whose bytes ``old`` does not hold (by sha256): path -> size."""
    known = {f.sha256 for f in read_manifest(old)[0].files}
    return {f.path: f.size for f in read_manifest(new)[0].files if f.sha256 not in known}


def _two_checkpoints(backend: Backend, tmp_path: Path) -> tuple[RunLayout, RunLayout, dict[str, int]]:
    """Pod A pushes step 10, pod B pulls it, A pushes step 20 with one weights file changed."""
    a, b = RunLayout(tmp_path / "pod-a", "run1"), RunLayout(tmp_path / "pod-b", "run1")
    remote = backend.make()
    first = default_files(10)
    remote.push(make_committed(a, 10, first), epoch=1)
    assert backend.make().pull_newest(b).step == 10
    second = dict(first, **{"model.safetensors": os.urandom(300_000)})
    remote.push(make_committed(a, 20, second), epoch=1)
    return a, b, _changed(a.step_dir(10), a.step_dir(20))


def test_a_newer_checkpoint_downloads_only_the_changed_files(backend: Backend, tmp_path: Path) -> None:
    _, b, changed = _two_checkpoints(backend, tmp_path)
    assert "model.safetensors" in changed and "config.json" not in changed
    if backend.hub:
        backend.hub.reset_stats()
    remote = backend.make()
    report = PullReport()
    pulled = remote.pull_newest(b, report=report)
    assert pulled.step == 20 and read_latest_step(b) == 20
    assert verify_checkpoint(pulled.path, expected_run_id="run1").ok
    assert report.bytes_received == sum(changed.values())
    assert report.files_received == len(changed)
    assert report.files_reused == len(read_manifest(pulled.path)[0].files) - len(changed)
    assert report.bytes_reused > 0
    # unchanged files are the same bytes on the volume, stored once
    assert (b.step_dir(10) / "config.json").stat().st_ino == (b.step_dir(20) / "config.json").stat().st_ino
    assert (b.step_dir(10) / "optim/shard0.pt").stat().st_ino == (
        b.step_dir(20) / "optim/shard0.pt"
    ).stat().st_ino
    if backend.hub:  # what crossed the wire besides small metadata: the changed file only
        assert backend.hub.stats.bytes_served < sum(changed.values()) + 64 * 1024


def test_a_rotted_local_file_costs_a_full_download_not_a_bad_checkpoint(
    backend: Backend, tmp_path: Path
) -> None:
    _, b, changed = _two_checkpoints(backend, tmp_path)
    shard = b.step_dir(10) / "optim/shard0.pt"
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF
    shard.write_bytes(bytes(data))  # same size, other bytes: the manifest still claims the old sha256
    remote = backend.make()
    report = PullReport()
    pulled = remote.pull_newest(b, report=report)
    assert pulled.step == 20
    assert verify_checkpoint(pulled.path, expected_run_id="run1").ok
    assert report.files_reused == 0 and report.bytes_received > sum(changed.values())
    assert any("does not verify" in s.reason for s in report.skipped)


def test_a_cancelled_pull_stops_and_leaves_the_volume_as_it_was(backend: Backend, tmp_path: Path) -> None:
    _, b, _ = _two_checkpoints(backend, tmp_path)
    with pytest.raises(PullCancelled):
        backend.make().pull_newest(b, cancel=lambda: True)
    assert read_latest_step(b) == 10 and not b.step_dir(20).exists()
    assert verify_checkpoint(b.step_dir(10), expected_run_id="run1").ok
    pulled = backend.make().pull_newest(b)  # and the next pull simply does it
    assert pulled.step == 20
