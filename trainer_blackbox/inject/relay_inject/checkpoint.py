"""Checkpoint directory names and the COMPLETE marker (stdlib only, shared by every trainer).

The worker commits a staged directory only once its COMPLETE file exists, so the marker must be the
last thing to reach the disk: every other file is fsynced first, the marker is written to a temp
name, fsynced and renamed into place (a reader never sees a half-written marker).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = [
    "COMPLETE_MARKER",
    "PARTIAL_DIRNAME",
    "STEP_DIR_FMT",
    "fsync_tree",
    "parse_step_dir",
    "read_complete_step",
    "step_dir",
    "write_complete",
]

STEP_DIR_FMT = "step_%08d"
# RELAY_OUTPUT_DIR/.relay_partial: where a Trainer's saves wait until every rank is done
PARTIAL_DIRNAME = ".relay_partial"
COMPLETE_MARKER = "COMPLETE"
_STEP_DIR_RE = re.compile(r"^step_(\d+)$")


def step_dir(output_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is staged: ``<RELAY_OUTPUT_DIR>/step_%08d``."""
    return output_dir / (STEP_DIR_FMT % step)


def parse_step_dir(name: str) -> int | None:
    """The step of a ``step_<N>`` directory name, or None."""
    m = _STEP_DIR_RE.match(name)
    return int(m.group(1)) if m else None


def _fsync_path(path: Path, *, directory: bool) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (files first, then their directories)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                _fsync_path(p, directory=False)
        _fsync_path(Path(dirpath), directory=True)


def write_complete(ckpt_dir: Path, step: int) -> Path:
    """Make ``ckpt_dir`` durable, then write ``COMPLETE`` (``{"step": N}``) last; return the marker path."""
    fsync_tree(ckpt_dir)
    tmp = ckpt_dir / (COMPLETE_MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": int(step)}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    marker = ckpt_dir / COMPLETE_MARKER
    os.replace(tmp, marker)
    _fsync_path(ckpt_dir, directory=True)
    return marker


def read_complete_step(ckpt_dir: Path) -> int | None:
    """The step recorded in ``ckpt_dir/COMPLETE``, or None when absent or unreadable."""
    try:
        data = json.loads((ckpt_dir / COMPLETE_MARKER).read_text(encoding="utf-8"))
        return int(data["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
