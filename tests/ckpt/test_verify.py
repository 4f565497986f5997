import json
import os
from pathlib import Path

import pytest

from relay.ckpt import (
    RunLayout,
    find_newest_verified,
    latest_committed,
    read_latest_step,
    recover_local,
    verify_checkpoint,
)
from tests.ckpt.util import make_committed, stage_checkpoint


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    return RunLayout(tmp_path / "relay", "run1")


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite_manifest(ckpt_dir: Path, fn) -> None:
    p = ckpt_dir / "manifest.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


DAMAGE = {
    "hash_mismatch": lambda d: _flip_byte(d / "model.safetensors"),
    "size_mismatch": lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:100]
    ),
    "missing_file": lambda d: (d / "optim" / "shard0.pt").unlink(),
    "extra_file": lambda d: (d / "stray.safetensors").write_bytes(b"not in the manifest"),
    "no_manifest": lambda d: (d / "manifest.json").unlink(),
    "bad_manifest": lambda d: (d / "manifest.json").write_bytes(b"{not json"),
    "step_mismatch": lambda d: _rewrite_manifest(d, lambda m: m.update(step=999)),
    "wrong_run": lambda d: _rewrite_manifest(d, lambda m: m.update(run_id="other-run")),
}


@pytest.mark.parametrize("code", list(DAMAGE))
def test_damaged_newest_is_skipped_with_reason(layout: RunLayout, code: str) -> None:
    make_committed(layout, 1)
    newest = make_committed(layout, 2)
    DAMAGE[code](newest.path)

    result = verify_checkpoint(newest.path, expected_run_id="run1")
    assert not result.ok and result.code == code and result.reason

    scan = find_newest_verified(layout)
    assert scan.checkpoint is not None and scan.checkpoint.step == 1
    assert [(s.path, s.code) for s in scan.skipped] == [(newest.path, code)]
    assert any(str(newest.path) in line for line in scan.describe())


def test_hostile_manifest_paths_are_bad_manifests(layout: RunLayout) -> None:
    ckpt = make_committed(layout, 1)
    for evil in ("../../etc/passwd", "/etc/passwd", "a/./b", "a//b", "manifest.json", "x\\y"):
        _rewrite_manifest(
            ckpt.path, lambda m, e=evil: m["files"].__setitem__(0, {**m["files"][0], "path": e})
        )
        result = verify_checkpoint(ckpt.path)
        assert not result.ok and result.code == "bad_manifest", evil


def test_unmarked_staged_dirs_are_reported(layout: RunLayout) -> None:
    make_committed(layout, 1)
    stage_checkpoint(layout, 5, marker=False)
    scan = find_newest_verified(layout)
    assert scan.checkpoint.step == 1
    assert [(s.path.name, s.code) for s in scan.skipped] == [("step_5", "no_marker")]


def test_rehash_false_checks_sizes_only(layout: RunLayout) -> None:
    ckpt = make_committed(layout, 1)
    _flip_byte(ckpt.path / "model.safetensors")
    assert verify_checkpoint(ckpt.path, rehash=False).ok
    assert verify_checkpoint(ckpt.path).code == "hash_mismatch"


def test_verify_of_a_missing_or_unreadable_path_does_not_raise(layout: RunLayout, tmp_path: Path) -> None:
    assert verify_checkpoint(tmp_path / "nope").code == "not_a_directory"
    ckpt = make_committed(layout, 1)
    (ckpt.path / "model.safetensors").unlink()
    os.mkfifo(ckpt.path / "model.safetensors")  # a special file where weights should be
    assert verify_checkpoint(ckpt.path).code == "unsafe_file"


def test_recover_local_quarantines_bad_ones_and_repoints_latest(layout: RunLayout) -> None:
    make_committed(layout, 1)
    make_committed(layout, 2)
    bad = make_committed(layout, 3)
    _flip_byte(bad.path / "model.safetensors")
    assert read_latest_step(layout) == 3

    scan = recover_local(layout)
    assert scan.checkpoint.step == 2 and read_latest_step(layout) == 2
    assert [s.code for s in scan.skipped] == ["hash_mismatch"]
    assert not bad.path.exists() and len(list(layout.quarantine_dir.iterdir())) == 1
    assert latest_committed(layout).step == 2
    # the trainer resumes from 2 and reaches step 3 again: that commit is no longer refused
    assert make_committed(layout, 3).step == 3


def test_quarantine_keeps_only_the_newest_few(layout: RunLayout) -> None:
    from relay.ckpt.verify import QUARANTINE_KEEP

    names = []
    for step in range(1, 7):  # six recoveries, each quarantining one bad checkpoint
        bad = make_committed(layout, step * 10)
        _flip_byte(bad.path / "model.safetensors")
        recover_local(layout)
        names.append(bad.path.name)
    kept = sorted(p.name.split(".")[0] for p in layout.quarantine_dir.iterdir())
    assert kept == sorted(names[-QUARANTINE_KEEP:]), kept
    assert not any(layout.trash_dir.iterdir())


def test_one_recovery_keeps_everything_it_quarantined(layout: RunLayout) -> None:
    for step in range(1, 6):
        make_committed(layout, step)
    for step in range(2, 6):  # four bad ones found by one recovery: all kept for forensics
        _flip_byte(layout.step_dir(step) / "model.safetensors")
    (layout.quarantine_dir).mkdir(parents=True)
    (layout.quarantine_dir / "step_00000099.123.abcd").mkdir()  # an old entry (previous name format)
    scan = recover_local(layout)
    assert scan.checkpoint.step == 1
    kept = sorted(p.name.split(".")[0] for p in layout.quarantine_dir.iterdir())
    assert kept == [f"step_{s:08d}" for s in range(2, 6)]


def test_recover_local_removes_latest_when_nothing_verifies(layout: RunLayout) -> None:
    only = make_committed(layout, 1)
    (only.path / "config.json").unlink()
    scan = recover_local(layout)
    assert scan.checkpoint is None and not os.path.lexists(layout.latest_link)
    assert latest_committed(layout) is None
    assert scan.describe()[-1] == "no verified local checkpoint"
