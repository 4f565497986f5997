"""Megatron-style checkpoints (Megatron-LM, slime): ``iter_%07d/`` plus ``latest_checkpointed_iteration.txt``.

Megatron saves into its ``--save`` directory (the relay's RELAY_OUTPUT_DIR): every rank writes its part
of ``iter_0000100/``, all ranks meet at a barrier, then rank 0 writes the tracker file
``latest_checkpointed_iteration.txt`` holding ``100``.  The tracker is Megatron's COMPLETE: an
``iter_N`` directory is complete once the tracker names N.

Megatron resumes with ``--load DIR``: it reads ``DIR/latest_checkpointed_iteration.txt`` and loads
``DIR/iter_%07d``.  So a committed Megatron checkpoint is shaped like a one-checkpoint save directory:
``step_N/{latest_checkpointed_iteration.txt, iter_000000N/}`` (plus the relay's manifest.json and
COMPLETE, which Megatron ignores), and RELAY_RESUME_FROM can be passed to ``--load`` as it is.

``wrap_staged`` reshapes a complete ``iter_N`` into that form inside the staging directory, as a
standard ``step_N`` + COMPLETE the ordinary commit takes from there.  Its work directory is
``.relay-wrap-iter_N`` (hidden from the staged scan); a kill between its steps is finished by
``finish_wraps`` before the next scan commits anything.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from relay.ckpt.fsutil import atomic_write_bytes, fsync_dir, fsync_tree_dirs, move_to_trash

TRACKER_NAME = "latest_checkpointed_iteration.txt"
ITER_RE = re.compile(r"^iter_(\d+)$")
WRAP_PREFIX = ".relay-wrap-"
_MAX_TRACKER_BYTES = 4096


def iter_dirname(iteration: int) -> str:
    """Megatron's name for the checkpoint of ``iteration`` (``iter_%07d``; wider past 9999999)."""
    return f"iter_{iteration:07d}"


def read_tracker(save_dir: Path) -> int | None:
    """The iteration ``save_dir/latest_checkpointed_iteration.txt`` names; None when it is absent, torn,
    or ``release`` (a converted checkpoint, not a training step)."""
    path = Path(save_dir) / TRACKER_NAME
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, "rb") as f:
            text = f.read(_MAX_TRACKER_BYTES).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _finish(wrap: Path, staging_dir: Path, step: int, fmt: str) -> Path:
    """``wrap`` holds the tracker and the iter directory: mark it COMPLETE and rename it to ``step_N``."""
    atomic_write_bytes(wrap / "COMPLETE", (json.dumps({"step": step, "source": fmt}) + "\n").encode())
    dest = staging_dir / f"step_{step:08d}"
    if os.path.lexists(dest):  # debris of an earlier attempt: the wrap is the complete one
        move_to_trash(dest, staging_dir / f"{WRAP_PREFIX}trash")
    os.rename(wrap, dest)
    fsync_dir(staging_dir)
    return dest


def wrap_staged(staging_dir: Path, iter_dir: Path, step: int) -> Path:
    """Turn the complete ``staging/iter_N`` into ``staging/step_N/{tracker, iter_N/} + COMPLETE``;
    returns the new directory.  Only the worker calls this, under the run's checkpoint lock."""
    staging_dir = Path(staging_dir)
    wrap = staging_dir / f"{WRAP_PREFIX}{iter_dir.name}"
    wrap.mkdir(exist_ok=True)
    atomic_write_bytes(wrap / TRACKER_NAME, str(step).encode())
    fsync_tree_dirs(iter_dir)
    os.rename(iter_dir, wrap / iter_dir.name)
    fsync_dir(wrap)
    fsync_dir(staging_dir)
    return _finish(wrap, staging_dir, step, iter_dir.name)


def finish_wraps(staging_dir: Path) -> list[Path]:
    """Complete the wraps a killed worker left half-done (the iter directory already moved in); returns
    the ``step_N`` directories made.  A wrap without its iter directory is left for the launch cleanup."""
    done: list[Path] = []
    try:
        entries = list(os.scandir(staging_dir))
    except FileNotFoundError:
        return done
    for entry in entries:
        if not entry.name.startswith(WRAP_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        name = entry.name[len(WRAP_PREFIX) :]
        m = ITER_RE.match(name)
        wrap = Path(entry.path)
        if m is None or not (wrap / name).is_dir() or read_tracker(wrap) != int(m.group(1)):
            continue
        done.append(_finish(wrap, Path(staging_dir), int(m.group(1)), name))
    return done
