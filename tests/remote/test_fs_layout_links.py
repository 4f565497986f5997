"""A ``file://`` remote never follows a symbolic link inside its own layout to create, write or delete.

A shared directory is writable by others. Each test plants a link where the remote keeps its own
directories or files, pointing at a "victim" outside the remote, then lets the remote work: the victim
must be exactly as it was, and a link the remote cannot do without is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from relay.ckpt import RunLayout
from relay.remote import RemoteError, UnsafeLayoutError, open_remote
from tests.ckpt.util import make_committed


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content (links by target): a victim's fingerprint."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "->" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(root))] = "dir"
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    (v / "step_00000001-0123456789abcdef").mkdir(parents=True)  # looks like a stale stage: cleanup bait
    (v / "step_00000001-0123456789abcdef" / "data.bin").write_bytes(b"precious")
    (v / "notes.txt").write_text("do not touch")
    (v / ".lock").write_text("the victim's own file")
    return v


def _remote_root(tmp_path: Path) -> Path:
    return tmp_path / "remote"


def _published(tmp_path: Path) -> tuple[Path, object]:
    """A remote with one published checkpoint (step 1), and a newer local checkpoint to push."""
    layout = RunLayout(tmp_path / "pod", "run1")
    remote = open_remote(f"file://{_remote_root(tmp_path)}", "run1")
    remote.push(make_committed(layout, 1), epoch=1)
    return _remote_root(tmp_path) / "run1", make_committed(layout, 5)


@pytest.mark.parametrize(
    "planted",
    ["relay/tmp", "relay/trash", "checkpoints", "relay"],
)
def test_a_linked_layout_directory_is_refused_and_the_target_untouched(
    tmp_path: Path, victim: Path, planted: str
) -> None:
    run_root, ckpt = _published(tmp_path)
    target = run_root / planted
    if target.exists():
        import shutil

        shutil.rmtree(target)
    target.symlink_to(victim, target_is_directory=True)
    before = snapshot(victim)
    remote = open_remote(f"file://{_remote_root(tmp_path)}", "run1")
    with pytest.raises(UnsafeLayoutError) as info:  # a push needs every one of them
        remote.push(ckpt, epoch=1)
    assert "is a symbolic link" in str(info.value) and str(target) in str(info.value)
    assert not info.value.retryable and "\n" not in str(info.value)
    for act in (lambda: remote.claim(2, lease_id="l2"), lambda: remote.prune(1, epoch=2)):
        try:  # what does not need the link works without it; what does is refused the same way
            act()
        except UnsafeLayoutError as exc:
            assert str(target) in str(exc)
    assert snapshot(victim) == before


def test_a_linked_run_directory_is_refused(tmp_path: Path, victim: Path) -> None:
    (_remote_root(tmp_path)).mkdir()
    (_remote_root(tmp_path) / "run1").symlink_to(victim, target_is_directory=True)
    before = snapshot(victim)
    remote = open_remote(f"file://{_remote_root(tmp_path)}", "run1")
    with pytest.raises(UnsafeLayoutError):
        remote.push(make_committed(RunLayout(tmp_path / "pod", "run1"), 5), epoch=1)
    with pytest.raises(UnsafeLayoutError):
        remote.state()
    assert snapshot(victim) == before


@pytest.mark.parametrize("planted", ["relay/state.json", "relay/.lock"])
def test_a_linked_state_or_lock_file_is_never_written_through(
    tmp_path: Path, victim: Path, planted: str
) -> None:
    run_root, ckpt = _published(tmp_path)
    (run_root / planted).unlink(missing_ok=True)
    (run_root / planted).symlink_to(victim / ".lock")
    before = snapshot(victim)
    remote = open_remote(f"file://{_remote_root(tmp_path)}", "run1")
    with pytest.raises(UnsafeLayoutError):
        remote.push(ckpt, epoch=1)
    with pytest.raises(UnsafeLayoutError):
        remote.claim(2, lease_id="l2")
    assert snapshot(victim) == before


def test_a_linked_step_directory_is_neither_listed_pulled_nor_deleted_through(
    tmp_path: Path, victim: Path
) -> None:
    run_root, ckpt = _published(tmp_path)
    (run_root / "checkpoints" / "step_00000009").symlink_to(victim, target_is_directory=True)
    before = snapshot(victim)
    remote = open_remote(f"file://{_remote_root(tmp_path)}", "run1")
    assert remote.list_steps() == [1]
    assert remote.pull_newest(RunLayout(tmp_path / "other", "run1")).step == 1
    remote.push(ckpt, epoch=1)
    remote.claim(2, lease_id="l2")
    remote.prune(1, epoch=2)
    assert snapshot(victim) == before
    assert remote.list_steps() == [5]


def test_a_link_planted_inside_a_stage_is_replaced_not_written_through(tmp_path: Path, victim: Path) -> None:
    """An interrupted push left a stage; someone swapped one of its files for a link to the victim."""
    from relay.ckpt.fsutil import sha256_bytes

    run_root, ckpt = _published(tmp_path)
    msha = sha256_bytes((ckpt.path / "manifest.json").read_bytes())
    stage = run_root / "relay" / "tmp" / f"step_00000005-{msha[:16]}"
    stage.mkdir(parents=True)
    (stage / "model.safetensors").symlink_to(victim / "notes.txt")
    before = snapshot(victim)
    remote = open_remote(f"file://{_remote_root(tmp_path)}", "run1")
    remote.push(ckpt, epoch=1)
    assert snapshot(victim) == before
    published = run_root / "checkpoints" / "step_00000005" / "model.safetensors"
    assert (
        not published.is_symlink()
        and published.read_bytes() == (ckpt.path / "model.safetensors").read_bytes()
    )
    assert remote.pull_newest(RunLayout(tmp_path / "other", "run1")).step == 5


def test_a_file_where_a_layout_directory_must_be_is_named(tmp_path: Path) -> None:
    run_root, ckpt = _published(tmp_path)
    import shutil

    shutil.rmtree(run_root / "relay" / "tmp", ignore_errors=True)
    (run_root / "relay" / "tmp").write_text("not a directory")
    with pytest.raises(RemoteError) as info:
        open_remote(f"file://{_remote_root(tmp_path)}", "run1").push(ckpt, epoch=1)
    assert "is not a directory" in str(info.value) and not info.value.retryable
