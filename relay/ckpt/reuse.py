"""Bytes a pull need not download: files with the same sha256 in checkpoints already on this volume.

Consecutive checkpoints of a run share most of their files (a frozen base, tokenizer and config files,
shards that did not change), so a pull first links every file of the wanted checkpoint that a committed
checkpoint on the volume already holds, and downloads only the rest.  A hard link costs no space and no
copy; where the volume refuses one (another filesystem, no link support) the file is copied.

The index trusts the local manifests; the pulled copy is verified whole afterwards, so a local file that
rotted since its commit fails that check and the pull downloads the checkpoint again without reuse
(``relay.remote.base``).  Committed checkpoints are never written in place (the trainer writes into
staging and reads its resume directory), which is what makes sharing their files safe.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from relay.ckpt.errors import ManifestError
from relay.ckpt.layout import RunLayout, committed_step_dirs
from relay.ckpt.manifest import FileEntry, read_manifest

log = logging.getLogger(__name__)


@dataclass
class Reuse:
    """What linking from the volume saved, and the files still to download."""

    missing: list[FileEntry] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


def local_blobs(layout: RunLayout) -> dict[str, tuple[Path, int]]:
    """sha256 -> (a file on this volume holding those bytes, its size), from the manifests of the
    committed checkpoints, newest first.  No hashing: a bad manifest or a missing file is skipped."""
    blobs: dict[str, tuple[Path, int]] = {}
    for _step, path in committed_step_dirs(layout):
        try:
            manifest, _ = read_manifest(path)
        except (ManifestError, OSError):
            continue
        for f in manifest.files:
            blobs.setdefault(f.sha256, (path / f.path, f.size))
    return blobs


def link_known(files: tuple[FileEntry, ...], blobs: dict[str, tuple[Path, int]], dest: Path) -> Reuse:
    """Put every file of ``files`` that ``blobs`` holds into ``dest`` (relative paths kept) by hard link,
    else by copy; returns the rest in ``missing``."""
    reuse = Reuse()
    for f in files:
        known = blobs.get(f.sha256)
        if known is None or known[1] != f.size or not _same_size(known[0], f.size):
            reuse.missing.append(f)
            continue
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _link_or_copy(known[0], target)
        except OSError as exc:  # gone meanwhile, unreadable: download it instead
            log.info("cannot reuse %s for %s (%s); downloading it", known[0], f.path, exc.strerror or exc)
            reuse.missing.append(f)
            continue
        reuse.files += 1
        reuse.bytes += f.size
    return reuse


def _same_size(path: Path, size: int) -> bool:
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # EXDEV, EPERM, EMLINK...: a copy holds the same bytes
        shutil.copyfile(src, dst)
