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

import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    COMPLETE_MARKER,
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
from relay.ids import INT64_MAX, parse_step

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 600.0
HF_TRAINER_STATE = "trainer_state.json"
DEEPSPEED_LATEST = "latest"
_MAX_MARKER_BYTES = 64 * 1024

# (pattern, format). The number in the name is the step unless a COMPLETE marker says otherwise.
STAGED_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^step_(\d+)$"), "relay"),
    (re.compile(r"^checkpoint-(\d+)$"), "hf"),
    (re.compile(r"^global_step(\d+)$"), "deepspeed"),
)

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


@dataclass(frozen=True)
class StagedCheckpoint:
    """A complete directory in the staging area, ready to commit."""

    path: Path
    step: int
    format: str  # "relay" (step_N), "hf" (checkpoint-N), "deepspeed" (global_stepN)
    marker: str = COMPLETE_MARKER  # which rule made it complete: COMPLETE, trainer_state.json, latest


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


def _read_marker_step(marker: Path) -> tuple[int | None, str | None]:
    """(step, problem) from a COMPLETE marker: the step its JSON ``{"step": N}`` names (None when it names
    none: empty, unreadable, not an object, no ``step`` or ``null``), or a problem when it names one that is
    not an integer in 0..INT64_MAX (NaN, 1e30, -1, 2.5, "5"): such a checkpoint is never committed."""
    try:
        with open(marker, "rb") as f:
            data = f.read(_MAX_MARKER_BYTES)
        doc = json.loads(data) if data.strip() else None
    except (OSError, ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict) or doc.get("step") is None:
        return None, None
    step = parse_step(doc["step"])
    if step is None:
        return (
            None,
            f"its {COMPLETE_MARKER} marker names step {str(doc['step'])[:40]}, not an integer in 0..{INT64_MAX}",
        )
    return step, None


def _json_object_file(path: Path) -> bool:
    """True when ``path`` is a regular file holding a complete JSON object (a torn write fails this)."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with open(path, "rb") as f:
            return isinstance(json.loads(f.read()), dict)
    except (OSError, ValueError):
        return False


def _deepspeed_latest_tag(staging_dir: Path) -> str | None:
    path = staging_dir / DEEPSPEED_LATEST
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def _match_staged_name(name: str) -> tuple[int, str] | None:
    """(step from the name, format) for a staged checkpoint directory name, else None."""
    for pattern, fmt in STAGED_PATTERNS:
        m = pattern.match(name)
        if m:
            return int(m.group(1)), fmt
    return None


@dataclass(frozen=True)
class InvalidStaged:
    """A complete staged directory that can never be committed (its step is out of range), and why."""

    path: Path
    reason: str


def find_complete_staged(staging_dir: Path) -> list[StagedCheckpoint]:
    """Complete staged checkpoints directly under ``staging_dir``, sorted by step (oldest first).

    Rules (also in trainer_blackbox/README.md): a directory named ``step_<N>``, ``checkpoint-<N>`` or
    ``global_step<N>`` is complete when it holds a ``COMPLETE`` file (written last; JSON
    ``{"step": N}`` in it wins over the name); or, for ``checkpoint-<N>``, when it holds a
    ``trainer_state.json`` that parses (the Hugging Face Trainer writes it last); or, for
    ``global_step<N>``, when ``staging_dir/latest`` names that tag (DeepSpeed writes it after the tag).
    Anything else -- a directory still being written -- is left alone.  A complete directory whose step
    is not an integer in 0..INT64_MAX is not listed (see :func:`scan_staged`).
    """
    return scan_staged(staging_dir)[0]


def scan_staged(staging_dir: Path) -> tuple[list[StagedCheckpoint], list[InvalidStaged]]:
    """(complete staged checkpoints sorted by step, complete ones with an impossible step).

    The second list is what the commit moves to ``ckpt/_rejected``: a name like
    ``step_99999999999999999999999`` or a marker ``{"step": 1e30}`` would otherwise become a checkpoint
    the commander cannot store and every later step would count as older.
    """
    staging_dir = Path(staging_dir)
    try:
        entries = list(os.scandir(staging_dir))
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise CheckpointError(f"cannot list staging directory {staging_dir}: {exc.strerror or exc}") from None
    ds_tag: str | None = None
    ds_tag_read = False
    found: list[StagedCheckpoint] = []
    invalid: list[InvalidStaged] = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        matched = _match_staged_name(entry.name)
        if matched is None:
            continue
        name_step, fmt = matched
        path = Path(entry.path)
        marker = path / COMPLETE_MARKER
        if marker.is_file() and not marker.is_symlink():
            marker_step, problem = _read_marker_step(marker)
            step, how = (name_step if marker_step is None else marker_step), COMPLETE_MARKER
        elif fmt == "hf" and _json_object_file(path / HF_TRAINER_STATE):
            step, how, problem = name_step, HF_TRAINER_STATE, None
        elif fmt == "deepspeed":
            if not ds_tag_read:
                ds_tag, ds_tag_read = _deepspeed_latest_tag(staging_dir), True
            if ds_tag != entry.name:
                continue
            step, how, problem = name_step, DEEPSPEED_LATEST, None
        else:
            continue
        if problem is None and parse_step(step) is None:
            problem = f"the step in its name ({step}) is larger than {INT64_MAX}"
        if problem is not None:
            invalid.append(InvalidStaged(path, problem))
            continue
        found.append(StagedCheckpoint(path, step, fmt, how))
    found.sort(key=lambda s: (s.step, s.path.name))
    invalid.sort(key=lambda s: s.path.name)
    return found, invalid


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
