"""kill -9 at every phase of a commit: ``latest`` always names a checkpoint that verifies, and the
next worker recovers to the newest one."""

import os
from pathlib import Path

import pytest

from relay.ckpt import (
    RunLayout,
    commit_newest_staged,
    find_complete_staged,
    find_newest_verified,
    read_latest_step,
    recover_local,
    verify_checkpoint,
)
from relay.ckpt.commit import PHASES
from tests.ckpt.util import make_committed, run_py, stage_checkpoint

KILL_AT = """
import os, signal, sys
from pathlib import Path
from relay.ckpt import RunLayout, commit_newest_staged
from relay.ckpt import commit as C
target = sys.argv[2]
def hook(phase):
    if phase == target:
        os.kill(os.getpid(), signal.SIGKILL)
C.PHASE_HOOK = hook
commit_newest_staged(RunLayout(Path(sys.argv[1]), "run1"), epoch=2, keep_last_n=2)
print("finished without reaching", target)
"""

# phase -> which step ``latest`` may name right after the kill
EXPECTED_LATEST = {
    "locked": {20},
    "mid_file": {20},  # killed while hashing the first block of a file
    "before_manifest": {20},
    "before_rename": {20},  # manifest written and fsynced, directory not yet renamed
    "before_latest": {20},  # renamed: committed, but latest not swapped yet
    "before_prune": {30},
    "mid_prune": {30},
}


def test_every_phase_is_covered() -> None:
    assert set(EXPECTED_LATEST) == set(PHASES)


@pytest.mark.parametrize("phase", list(EXPECTED_LATEST))
def test_kill9_during_commit_leaves_latest_valid(tmp_path: Path, phase: str) -> None:
    layout = RunLayout(tmp_path / "relay", "run1")
    make_committed(layout, 10, keep_last_n=2)
    make_committed(layout, 20, keep_last_n=2)
    files = {"model.safetensors": os.urandom(9 * 1024 * 1024), "optim/a.pt": os.urandom(4096), "b": b"x"}
    stage_checkpoint(layout, 30, files)

    proc = run_py(KILL_AT, str(layout.relay_root), phase)
    assert proc.returncode == -9, proc.stdout + proc.stderr

    latest = read_latest_step(layout)
    assert latest in EXPECTED_LATEST[phase]
    assert verify_checkpoint(layout.latest_link.resolve()).ok
    assert verify_checkpoint(layout.step_dir(latest)).ok
    scan = find_newest_verified(layout)
    assert scan.checkpoint is not None and scan.checkpoint.step in (20, 30)

    # The next worker: recover, then commit whatever complete checkpoint is still staged.
    recover_local(layout)
    commit_newest_staged(layout, epoch=3, keep_last_n=2)
    assert read_latest_step(layout) == 30
    assert verify_checkpoint(layout.step_dir(30)).ok
    assert find_complete_staged(layout.staging_dir) == []
    # a prune the kill interrupted is finished by the next commit
    make_committed(layout, 40, {"w": b"40"}, keep_last_n=2)
    assert sorted(p.name for p in layout.ckpt_dir.glob("step_*")) == ["step_00000030", "step_00000040"]
    assert not any(layout.trash_dir.iterdir())
    assert not list(layout.ckpt_dir.glob(".latest.tmp-*"))
