"""Durability primitives shared by the local commit and the filesystem remote.

A rename is only atomic *and durable* when the renamed data and the directory entries are on disk,
so every helper here fsyncs what it wrote and the directory it wrote into. Hashing reads in large
blocks into one reused buffer: hashlib releases the GIL on big updates, so a small thread pool
hashes several files at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

HASH_CHUNK = 8 * 1024 * 1024  # >= 1 MiB: fewer syscalls, hashlib drops the GIL for the whole block


def fsync_dir(path: Path | str) -> None:
    """Make the directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(
    path: Path | str,
    *,
    fsync: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Return ``(size, sha256 hex)`` of a file, reading it once in HASH_CHUNK blocks.

    ``fsync=True`` also flushes the file's data to disk (the commit needs both, one open is cheaper).
    ``on_chunk(n)`` is called after each block (progress bars, test hooks).
    """
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
            if on_chunk is not None:
                on_chunk(n)
        if fsync:
            os.fsync(fd)
    return size, h.hexdigest()


def copy_file_hashed(
    src: Path | str,
    dst: Path | str,
    *,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Copy ``src`` to ``dst`` (fsynced), hashing the bytes as they pass; returns ``(size, sha256)``.

    Reading once for both the copy and the hash keeps a push or pull at one pass over the data.
    """
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        return copy_fd_hashed(fin.fileno(), fout.fileno(), on_chunk=on_chunk)


def copy_fd_hashed(fin: int, fout: int, *, on_chunk: Callable[[int], None] | None = None) -> tuple[int, str]:
    """:func:`copy_file_hashed` between open descriptors (the filesystem remote opens its side of every
    copy itself, without following links); fsyncs ``fout``."""
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    size = 0
    while True:
        n = os.readv(fin, [buf])
        if not n:
            break
        chunk = view[:n]
        h.update(chunk)
        written = 0
        while written < n:
            written += os.write(fout, chunk[written:])
        size += n
        if on_chunk is not None:
            on_chunk(n)
    os.fsync(fout)
    return size, h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename + directory fsync.

    Readers see either the old content or the new, never a torn file.
    """
    tmp = path.with_name(f".relay-{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_tree_dirs(root: Path) -> None:
    """fsync every directory under ``root`` (bottom-up), so all file entries the trainer created are durable."""
    for dirpath, _dirnames, _files in os.walk(root, topdown=False):
        fsync_dir(dirpath)


def move_to_trash(path: Path, trash_dir: Path) -> Path:
    """Rename ``path`` into ``trash_dir`` (atomic) so a later, interruptible delete never leaves a
    half-deleted tree where a checkpoint is looked for. Returns the new path."""
    trash_dir.mkdir(parents=True, exist_ok=True)
    dest = trash_dir / f"{path.name}.{uuid.uuid4().hex[:12]}"
    os.rename(path, dest)
    return dest


def empty_dir(path: Path) -> None:
    """Delete everything inside ``path`` (best effort; a crash mid-way is harmless because callers only
    empty trash or temp directories)."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except OSError:
                pass
