"""A push to a ``file://`` remote, before it publishes: the checkpoint built in ``relay/tmp/``.

The staging directory is named by step and manifest hash, so an interrupted push of the same
checkpoint resumes it: files already there with the right size were copied and verified before.
A file some published checkpoint already holds (same sha256) is hard-linked from there (0 bytes
sent); any other is copied from the local checkpoint to a ``.relay-*.part`` name, hashed on the way,
checked against the manifest, fsynced and renamed.  Every step goes through
:class:`~relay.remote.fs_tree.SafeDir`: nothing is followed through a symbolic link, and a link
found where a staged file should be is removed, never written through.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from relay.ckpt.errors import ManifestError
from relay.ckpt.fsutil import copy_fd_hashed
from relay.ckpt.layout import CKPT_DIR_FMT, COMMITTED_RE, MANIFEST_NAME
from relay.ckpt.manifest import TEMP_PREFIX, CommittedCheckpoint, FileEntry, Manifest
from relay.remote.errors import RemoteError
from relay.remote.fs_tree import PublishLock, SafeDir, holder_name

CHECKPOINTS_DIR = "checkpoints"
#: sha256 -> (step directory, path in it, size) of a file a published checkpoint lists
Held = dict[str, tuple[str, str, int]]


def step_dirs(ckpts: SafeDir | None) -> dict[int, str]:
    """step -> directory name, for real directories only (a link named like a step is ignored)."""
    out: dict[int, str] = {}
    for name, is_dir in ckpts.names() if ckpts is not None else []:
        m = COMMITTED_RE.match(name)
        if m and is_dir:
            out[int(m.group(1))] = name
    return out


def stage_checkpoint(
    run: SafeDir,
    tmp: SafeDir,
    ckpt: CommittedCheckpoint,
    manifest: Manifest,
    mbytes: bytes,
    msha: str,
    *,
    lock_timeout_s: float,
    on_chunk: Callable[[int], None],
    name: str | None = None,
) -> tuple[str, int, int, int]:
    """Build (or finish building) the checkpoint (or the final export: ``name``) in ``tmp``: (stage name,
    bytes sent, files sent, files skipped)."""
    stage = f"{name or CKPT_DIR_FMT % manifest.step}-{msha[:16]}"
    sent = files_sent = files_skipped = 0
    held = held_files(run)
    lock = PublishLock(tmp, stage + ".lock", timeout_s=lock_timeout_s, holder=holder_name("staging"))
    with lock, tmp.need(stage) as sdir:
        for f in manifest.files:
            *parents, leaf = f.path.split("/")
            with sdir.walk(parents, create=True) as d:
                assert d is not None
                st = d.lstat(leaf)
                if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == f.size:
                    files_skipped += 1  # finished (verified) by an interrupted push
                    continue
                if st is not None:
                    d.remove(leaf)  # a link or a torn file: never written through
                if link_held(run, held.get(f.sha256), d, leaf):
                    files_skipped += 1
                    continue
                sent += copy_in(ckpt, f, d, leaf, on_chunk)
                files_sent += 1
        for dirpath, _dirs, names, dfd in os.fwalk(".", dir_fd=sdir.fd):  # parts of an interrupted copy
            for part in names:
                if part.startswith(TEMP_PREFIX):
                    os.unlink(part, dir_fd=dfd)
            if dirpath != ".":
                os.fsync(dfd)
        sdir.write_atomic(MANIFEST_NAME, mbytes)
    return stage, sent, files_sent, files_skipped


def held_files(run: SafeDir) -> Held:
    """What the published checkpoints' manifests list, by sha256."""
    held: Held = {}
    with run.walk([CHECKPOINTS_DIR], create=False) as ckpts:
        for _step, step_dir in sorted(step_dirs(ckpts).items(), reverse=True):
            assert ckpts is not None
            with ckpts.walk([step_dir], create=False) as sd:
                try:
                    data = sd.read_bytes(MANIFEST_NAME) if sd is not None else None
                    m = Manifest.from_json_bytes(data or b"", origin=step_dir)
                except (OSError, ManifestError, RemoteError):
                    continue  # an unreadable remote manifest just holds nothing
            for f in m.files:
                held.setdefault(f.sha256, (step_dir, f.path, f.size))
    return held


def link_held(run: SafeDir, held: tuple[str, str, int] | None, d: SafeDir, name: str) -> bool:
    """Hard-link a file a published checkpoint holds with the same sha256 (0 bytes sent)."""
    if held is None:
        return False
    step_dir, path, size = held
    *parents, src_name = path.split("/")
    with run.walk([CHECKPOINTS_DIR, step_dir, *parents], create=False) as src:
        st = src.lstat(src_name) if src is not None else None
        if src is None or st is None or not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False  # pruned meanwhile, or not a plain file: copy from the local checkpoint
        try:
            src.link_into(src_name, d, name)
            return True
        except OSError:
            return False  # no hard links here


def copy_in(
    ckpt: CommittedCheckpoint, f: FileEntry, d: SafeDir, name: str, on_chunk: Callable[[int], None]
) -> int:
    """Copy one file of the local checkpoint into the stage, verified against its manifest entry."""
    local = Path(ckpt.path) / f.path
    part = f"{TEMP_PREFIX}{name}.part"
    try:
        fin = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RemoteError(
            f"local checkpoint file {local} is gone (pruned?); not pushing step {ckpt.step}", retryable=False
        ) from None
    try:
        fout = d.create(part)
        try:
            size, digest = copy_fd_hashed(fin, fout, on_chunk=on_chunk)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    if size != f.size or digest != f.sha256:
        d.remove(part)
        raise RemoteError(
            f"local file {local} no longer matches its manifest (size {size} vs {f.size}); the local "
            "checkpoint is corrupt, not pushing it",
            retryable=False,
        )
    d.rename(part, d, name)
    return size


def clean_stale_stages(tmp: SafeDir, published_step: int) -> None:
    """Drop staging dirs of steps at or below what was just published, unless someone works on them."""
    for name, _is_dir in tmp.names():
        if not name.startswith("step_"):
            continue
        stage = name[: -len(".lock")] if name.endswith(".lock") else name
        try:
            step = int(stage[5:].split("-", 1)[0])
        except ValueError:
            continue
        if step > published_step or (name.endswith(".lock") and tmp.lstat(stage) is not None):
            continue
        lock = PublishLock(tmp, stage + ".lock", timeout_s=0, holder=holder_name("cleaning"))
        try:
            if not lock.try_acquire():
                continue
            try:
                with contextlib.suppress(FileNotFoundError):
                    tmp.remove(stage)
            finally:
                lock.release()
            tmp.remove(stage + ".lock")
        except (OSError, RemoteError):
            continue
