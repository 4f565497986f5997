"""A verified copy from elsewhere becomes ``ckpt/step_N``: the pull's way in, beside the commit's.

``relay.ckpt.commit`` turns a staged directory the trainer wrote into a checkpoint; this module
does the same for a checkpoint pulled from a remote, which arrives already hashed and verified.
Both rename under the run's lock and move ``latest`` only forward, so the local store has one set
of rules for every way a directory becomes ``step_N`` (the remotes decide *what* to pull and
call these to put it in place).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from relay.ckpt.commit import DEFAULT_LOCK_TIMEOUT_S, checkpoint_lock, set_latest
from relay.ckpt.fsutil import empty_dir, fsync_dir, fsync_tree_dirs, move_to_trash, sha256_bytes
from relay.ckpt.layout import MANIFEST_NAME, RunLayout, newest_committed_step
from relay.ckpt.manifest import CommittedCheckpoint, Manifest, committed_from_manifest
from relay.ckpt.verify import verify_checkpoint

log = logging.getLogger(__name__)


def same_local(layout: RunLayout, step: int, manifest_sha256: str) -> CommittedCheckpoint | None:
    """The local step_N when it is byte-identical to a remote one (same manifest) and verifies, so a
    pull can reuse it instead of downloading it again."""
    path = layout.step_dir(step)
    try:
        data = (path / MANIFEST_NAME).read_bytes()
    except OSError:
        return None
    if sha256_bytes(data) != manifest_sha256:
        return None
    result = verify_checkpoint(path, expected_run_id=layout.run_id, expected_step=step)
    if not result.ok or result.manifest is None:
        return None
    return committed_from_manifest(path, result.manifest, data)


def install_pulled(
    layout: RunLayout,
    src: Path,
    manifest: Manifest,
    manifest_bytes: bytes,
    *,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> CommittedCheckpoint:
    """Rename a verified download into ``ckpt/step_N`` under the run lock; point ``latest`` at it when
    it is the newest committed step. A different local step_N is replaced (the remote is the truth
    the caller chose to pull)."""
    fsync_tree_dirs(src)
    dest = layout.step_dir(manifest.step)
    with checkpoint_lock(layout, lock_timeout_s):
        if os.path.lexists(dest):
            move_to_trash(dest, layout.trash_dir)
        os.rename(src, dest)
        fsync_dir(layout.ckpt_dir)
        newest = newest_committed_step(layout)
        if newest is None or manifest.step >= newest:
            set_latest(layout, manifest.step)
        empty_dir(layout.trash_dir)
    log.info("pulled step %d -> %s", manifest.step, dest)
    return committed_from_manifest(dest, manifest, manifest_bytes)
