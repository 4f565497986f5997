"""Staging -> ``ckpt/step_N``: the only code path that makes a checkpoint trusted.

The trainer writes into ``ckpt/_staging/`` (RELAY_OUTPUT_DIR). A staged directory is committed only
when it is complete by a documented rule (see ``find_complete_staged``). The commit, under the
run's file lock, is:

1. hash every file (fsyncing it in the same pass) across a small thread pool;
2. write ``manifest.json`` atomically (temp + fsync + rename) and fsync every directory in the tree;
3. ``rename`` the staged directory to ``ckpt/step_%08d`` -- the commit point: O(1), same filesystem;
4. swap ``ckpt/latest`` atomically (temp symlink + ``os.replace``) and fsync ``ckpt/``;
5. prune to ``keep_last_n``, never the newest and never the one ``latest`` names.

A kill -9 at any point leaves ``latest`` on a checkpoint that was valid before, or on the new one:
before step 3 nothing in ``ckpt/`` changed; between 3 and 4 ``latest`` still names the previous
checkpoint and the next commit repairs it; deletions go through ``ckpt/_trash`` (an atomic rename)
so a half-deleted tree never looks like a checkpoint.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.ckpt import megatron
from relay.ckpt.errors import (
    CheckpointError,
    CheckpointLockTimeout,
    InvalidStagedCheckpoint,
    ManifestError,
    StaleStagedCheckpoint,
)
from relay.ckpt.fsutil import (
    HASH_CHUNK,
    atomic_write_bytes,
    empty_dir,
    fsync_dir,
    fsync_tree_dirs,
    move_to_trash,
    sha256_bytes,
)
from relay.ckpt.layout import (
    CKPT_DIR_FMT,
    MANIFEST_NAME,
    RunLayout,
    committed_step_dirs,
    newest_committed_step,
    read_latest_step,
)
from relay.ckpt.manifest import (
    FORMAT_VERSION,
    TEMP_PREFIX,
    CommittedCheckpoint,
    Manifest,
    committed_from_manifest,
    hash_tree,
    list_checkpoint_files,
    now_iso,
    read_manifest,
)
from relay.ckpt.staged import (
    DEEPSPEED_LATEST,
    HF_TRAINER_STATE,
    STAGED_PATTERNS,
    InvalidStaged,
    StagedCheckpoint,
    find_complete_staged,
    scan_staged,
)
from relay.ids import INT64_MAX, parse_step

__all__ = [
    "DEEPSPEED_LATEST",
    "HF_TRAINER_STATE",
    "STAGED_PATTERNS",
    "InvalidStaged",
    "StagedCheckpoint",
    "checkpoint_lock",
    "commit_checkpoint",
    "commit_newest_staged",
    "find_complete_staged",
    "prune_local",
    "repair_latest",
    "scan_staged",
    "set_latest",
]

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 600.0
# Test seam: called with a phase name at each step of a commit (the kill -9 tests install a hook
# that SIGKILLs the process at a chosen phase). Production leaves it None.
PHASE_HOOK: Callable[[str], None] | None = None
PHASES = (
    "locked",
    "mid_file",
    "before_manifest",
    "before_rename",
    "before_latest",
    "before_prune",
    "mid_prune",
)


def _phase(name: str) -> None:
    hook = PHASE_HOOK
    if hook is not None:
        hook(name)


def _mid_file_hook(n: int) -> None:
    """After a full block: the file being hashed is not finished (nor fsynced) yet."""
    if n == HASH_CHUNK:
        _phase("mid_file")


@contextmanager
def checkpoint_lock(layout: RunLayout, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """The run's volume-wide lock: commits, prunes, recovery and pull installs never interleave."""
    from filelock import FileLock, Timeout

    layout.run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(layout.lock_file), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise CheckpointLockTimeout(
            f"checkpoint lock {layout.lock_file} still held by another process after {timeout_s:.0f}s"
        ) from None
    try:
        yield
    finally:
        lock.release()


def reject_invalid_staged(layout: RunLayout, invalid: list[InvalidStaged]) -> list[Path]:
    """Caller holds the lock. Park each directory in ``ckpt/_rejected`` with a ``<name>.reason`` file beside
    it, and log why; returns where they went. A directory already gone is skipped."""
    moved: list[Path] = []
    for item in invalid:
        if not item.path.is_dir() or item.path.is_symlink():
            continue
        dest = _reject(layout, item.path, item.reason)
        log.error("rejected staged checkpoint %s: %s; moved to %s", item.path, item.reason, dest)
        moved.append(dest)
    return moved


def set_latest(layout: RunLayout, step: int) -> None:
    """Point ``ckpt/latest`` at ``step_N`` atomically: temp symlink, ``os.replace``, fsync the directory."""
    target = CKPT_DIR_FMT % step
    tmp = layout.ckpt_dir / f".latest.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, layout.latest_link)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(layout.ckpt_dir)


def _housekeeping(layout: RunLayout) -> None:
    """Finish what a killed predecessor left: empty the trash, drop temp ``latest`` links."""
    empty_dir(layout.trash_dir)
    try:
        for entry in os.scandir(layout.ckpt_dir):
            if entry.name.startswith(".latest.tmp-"):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass
    except FileNotFoundError:
        pass


def repair_latest(layout: RunLayout) -> int | None:
    """Caller holds the lock. Point ``latest`` at the newest step directory holding a manifest when it
    names an older or missing one (a commit killed between its rename and the symlink swap)."""
    newest = newest_committed_step(layout)
    if newest is None:
        return None
    current = read_latest_step(layout)
    if current != newest:
        current_ok = current is not None and (layout.step_dir(current) / MANIFEST_NAME).is_file()
        if not current_ok or current < newest:
            set_latest(layout, newest)
            log.info("ckpt/latest repaired: now step %d (was %s)", newest, current)
            return newest
    return current


def _discard(layout: RunLayout, path: Path) -> None:
    move_to_trash(path, layout.trash_dir)
    empty_dir(layout.trash_dir)


def _reject(layout: RunLayout, path: Path, reason: str | None = None) -> Path:
    layout.rejected_dir.mkdir(parents=True, exist_ok=True)
    dest = layout.rejected_dir / f"{path.name}.{uuid.uuid4().hex[:8]}"
    os.rename(path, dest)
    if reason is not None:  # for whoever looks at _rejected/ later; the directory itself is left as it was
        try:
            atomic_write_bytes(dest.with_name(dest.name + ".reason"), (reason + "\n").encode())
        except OSError as exc:  # pragma: no cover - the log line still says why
            log.warning("cannot write the reason next to %s: %s", dest, exc)
    return dest


def _remove_temp_files(src: Path) -> None:
    """Drop our own temp files (a manifest write killed half-way) so they never ship in a checkpoint."""
    for entry in os.scandir(src):
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)


def _prune_locked(layout: RunLayout, keep_last_n: int) -> list[int]:
    keep_n = max(1, int(keep_last_n))
    dirs = committed_step_dirs(layout)
    latest = read_latest_step(layout)
    removed: list[int] = []
    for step, path in dirs[keep_n:]:
        if step == latest:
            continue
        _phase("mid_prune")
        move_to_trash(path, layout.trash_dir)
        removed.append(step)
    if removed:
        fsync_dir(layout.ckpt_dir)
        empty_dir(layout.trash_dir)
        log.info("pruned local checkpoints: steps %s", removed)
    return removed


def prune_local(
    layout: RunLayout, keep_last_n: int, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> list[int]:
    """Delete all but the newest ``keep_last_n`` (>= 1) committed checkpoints; returns removed steps."""
    with checkpoint_lock(layout, lock_timeout_s):
        try:
            return _prune_locked(layout, keep_last_n)
        except OSError as exc:
            raise CheckpointError(f"prune of {layout.ckpt_dir} failed: {exc.strerror or exc}") from None


def commit_checkpoint(
    layout: RunLayout,
    staged: StagedCheckpoint,
    *,
    epoch: int,
    keep_last_n: int,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    workers: int | None = None,
) -> CommittedCheckpoint:
    """Commit one complete staged checkpoint (see the module docstring for the sequence).

    Raises StaleStagedCheckpoint (step not newer than the newest committed; the staged directory is
    discarded), InvalidStagedCheckpoint (it can never be committed; moved to ``ckpt/_rejected``),
    CheckpointLockTimeout, or CheckpointError (I/O failure, e.g. disk full; nothing was published).
    Returns the committed checkpoint; if another process already committed this staged directory,
    returns that commit.
    """
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer (got {epoch!r})")
    src = Path(staged.path)
    with checkpoint_lock(layout, lock_timeout_s):
        _phase("locked")
        try:
            return _commit_locked(layout, staged, src, epoch=epoch, keep_last_n=keep_last_n, workers=workers)
        except CheckpointError:
            raise
        except OSError as exc:
            raise CheckpointError(
                f"commit of {src} (step {staged.step}) failed: {exc.strerror or exc}"
                f"{' (' + str(exc.filename) + ')' if exc.filename else ''}; nothing was published"
            ) from None


def _commit_locked(
    layout: RunLayout,
    staged: StagedCheckpoint,
    src: Path,
    *,
    epoch: int,
    keep_last_n: int,
    workers: int | None,
) -> CommittedCheckpoint:
    layout.ckpt_dir.mkdir(parents=True, exist_ok=True)
    _housekeeping(layout)
    already = _admit(layout, staged, src)
    if already is not None:
        return already
    dest = layout.step_dir(staged.step)
    rels = _files_to_commit(layout, src)
    entries = hash_tree(src, rels, fsync=True, workers=workers, on_chunk=_mid_file_hook)
    _phase("before_manifest")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        run_id=layout.run_id,
        step=staged.step,
        epoch=epoch,
        created_at=now_iso(),
        files=tuple(entries),
        source=src.name,
    )
    data = manifest.to_json_bytes()
    atomic_write_bytes(src / MANIFEST_NAME, data)
    fsync_tree_dirs(src)

    _phase("before_rename")
    if os.path.lexists(dest):  # a step dir without a manifest: debris, never a commit
        move_to_trash(dest, layout.trash_dir)
    os.rename(src, dest)
    fsync_dir(layout.ckpt_dir)
    fsync_dir(src.parent)

    _phase("before_latest")
    set_latest(layout, staged.step)
    _phase("before_prune")
    _prune_locked(layout, keep_last_n)
    committed = CommittedCheckpoint(
        step=staged.step,
        path=dest,
        manifest_sha256=sha256_bytes(data),
        total_bytes=manifest.total_bytes,
        epoch=epoch,
        file_count=len(entries),
    )
    log.info(
        "committed step %d (%d files, %d bytes) -> %s", staged.step, len(entries), committed.total_bytes, dest
    )
    return committed


def _admit(layout: RunLayout, staged: StagedCheckpoint, src: Path) -> CommittedCheckpoint | None:
    """Whether ``src`` may be committed as ``staged.step``: raises when it may not (a bad step, gone,
    not newer than what is committed); the committed checkpoint when another process committed it while
    this one waited for the lock; None to go on."""
    if parse_step(staged.step) is None:
        if not src.is_dir() or src.is_symlink():
            raise InvalidStagedCheckpoint(f"staged checkpoint {src} no longer exists")
        reason = f"step {str(staged.step)[:40]} is not an integer in 0..{INT64_MAX}"
        where = _reject(layout, src, reason)
        raise InvalidStagedCheckpoint(f"staged checkpoint {src}: {reason}; moved to {where}")
    dest = layout.step_dir(staged.step)
    if not src.is_dir() or src.is_symlink():
        if (dest / MANIFEST_NAME).is_file():  # another process committed it while we waited for the lock
            manifest, data = read_manifest(dest)
            return committed_from_manifest(dest, manifest, data)
        raise InvalidStagedCheckpoint(f"staged checkpoint {src} no longer exists")
    repair_latest(layout)
    newest = newest_committed_step(layout)
    if newest is not None and staged.step <= newest:
        _discard(layout, src)
        log.warning("discarded staged %s: step %d is not newer than committed %d", src, staged.step, newest)
        raise StaleStagedCheckpoint(staged.step, newest, str(src))
    return None


def _files_to_commit(layout: RunLayout, src: Path) -> list[str]:
    """The staged checkpoint's files (relative paths), its temp files removed; a checkpoint that holds
    what relay cannot commit (its own manifest.json, a link, a special file) is moved aside and refused."""
    # A manifest.json already in the staged dir is ours from a killed attempt (rewritten below) --
    # unless it is not a relay manifest at all: the name is reserved, so refuse rather than clobber it.
    if (src / MANIFEST_NAME).exists():
        try:
            read_manifest(src)
        except ManifestError as exc:
            where = _reject(layout, src)
            raise InvalidStagedCheckpoint(
                f"staged checkpoint holds its own {MANIFEST_NAME}, a name relay reserves ({exc}); moved to {where}"
            ) from None
    _remove_temp_files(src)
    try:
        rels = list_checkpoint_files(src)
    except InvalidStagedCheckpoint as exc:
        where = _reject(layout, src)
        raise InvalidStagedCheckpoint(f"{exc}; moved to {where}") from None
    return rels


def _reshape_megatron(layout: RunLayout, staged: list[StagedCheckpoint], lock_timeout_s: float) -> bool:
    """Give the newest complete Megatron ``iter_N`` the shape ``--load`` expects (relay.ckpt.megatron),
    finishing any reshape a kill interrupted; True when the staging directory changed."""
    newest = staged[-1] if staged and staged[-1].format == "megatron" else None
    try:
        pending = any(e.name.startswith(megatron.WRAP_PREFIX) for e in os.scandir(layout.staging_dir))
    except FileNotFoundError:
        pending = False
    if newest is None and not pending:
        return False
    with checkpoint_lock(layout, lock_timeout_s):
        try:
            megatron.finish_wraps(layout.staging_dir)
            if newest is not None and newest.path.is_dir():
                megatron.wrap_staged(layout.staging_dir, newest.path, newest.step)
        except OSError as exc:
            raise CheckpointError(
                f"cannot reshape Megatron checkpoint in {layout.staging_dir}: {exc.strerror or exc}"
            ) from None
    return True


def commit_newest_staged(
    layout: RunLayout,
    *,
    epoch: int,
    keep_last_n: int,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> CommittedCheckpoint | None:
    """Commit the newest complete staged checkpoint and discard older complete ones unhashed.

    The worker's polling loop calls this; None when nothing complete is staged.  Complete directories
    with an impossible step are moved to ``ckpt/_rejected`` first (logged, with a ``.reason`` file), so
    they never block the valid ones.
    """
    staged, invalid = scan_staged(layout.staging_dir)
    if _reshape_megatron(layout, staged, lock_timeout_s):
        staged, invalid = scan_staged(layout.staging_dir)
    if invalid:
        with checkpoint_lock(layout, lock_timeout_s):
            try:
                reject_invalid_staged(layout, invalid)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot move a rejected staged checkpoint to {layout.rejected_dir}: {exc.strerror or exc}"
                ) from None
    if not staged:
        return None
    newest = staged[-1]
    committed = commit_checkpoint(
        layout, newest, epoch=epoch, keep_last_n=keep_last_n, lock_timeout_s=lock_timeout_s
    )
    older = [s for s in staged[:-1] if s.path.is_dir()]
    if older:
        with checkpoint_lock(layout, lock_timeout_s):
            for s in older:
                if s.path.is_dir():
                    _discard(layout, s.path)
                    log.warning(
                        "discarded staged %s (step %d): a newer checkpoint was committed", s.path, s.step
                    )
    return committed
