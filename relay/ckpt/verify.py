"""Is this checkpoint exactly what its manifest says? And which is the newest one that is?

``verify_checkpoint`` rehashes every file against manifest.json. ``find_newest_verified`` walks the
committed checkpoints newest first and returns the first that verifies, with every one it skipped
and why, so a resume is explained rather than silent. ``recover_local`` additionally quarantines
the bad ones and points ``latest`` at the good one (the worker calls it before launching a trainer).

Extra-file policy: a file present in a committed directory but absent from its manifest makes the
checkpoint invalid (code ``extra_file``). Committed directories are immutable, and loaders often
glob (``*.safetensors``), so an unlisted file could change what gets loaded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relay.ckpt.commit import (
    DEFAULT_LOCK_TIMEOUT_S,
    STAGED_PATTERNS,
    _housekeeping,
    checkpoint_lock,
    scan_staged,
    set_latest,
)
from relay.ckpt.errors import CheckpointError, InvalidStagedCheckpoint, ManifestError, ManifestMissing
from relay.ckpt.fsutil import empty_dir, fsync_dir, move_to_trash, sha256_bytes
from relay.ckpt.layout import (
    COMMITTED_RE,
    RunLayout,
    committed_step_dirs,
    read_latest_step,
)
from relay.ckpt.manifest import (
    CommittedCheckpoint,
    Manifest,
    committed_from_manifest,
    hash_tree,
    list_checkpoint_files,
    read_manifest,
)

log = logging.getLogger(__name__)

# Reason codes (stable, for events and tests); the human-readable reason says the details.
NOT_A_DIRECTORY = "not_a_directory"
NO_MANIFEST = "no_manifest"
BAD_MANIFEST = "bad_manifest"
WRONG_RUN = "wrong_run"
STEP_MISMATCH = "step_mismatch"
UNSAFE_FILE = "unsafe_file"
MISSING_FILE = "missing_file"
EXTRA_FILE = "extra_file"
SIZE_MISMATCH = "size_mismatch"
HASH_MISMATCH = "hash_mismatch"
UNREADABLE = "unreadable"
NO_MARKER = "no_marker"

#: Quarantined checkpoints kept for forensics (besides those of the latest recovery, which are always
#: kept): every recovery on a flaky disk would otherwise add full-size copies to the volume forever.
QUARANTINE_KEEP = 3


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    reason: str | None
    manifest: Manifest | None
    code: str | None = None
    manifest_sha256: str | None = None
    extra_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkippedCheckpoint:
    path: Path
    reason: str
    code: str = "invalid"


@dataclass(frozen=True)
class RecoveryScan:
    checkpoint: CommittedCheckpoint | None
    skipped: list[SkippedCheckpoint] = field(default_factory=list)

    def describe(self) -> list[str]:
        """One line per decision, for logs and events."""
        lines = [f"skipped {s.path}: {s.reason}" for s in self.skipped]
        if self.checkpoint is not None:
            lines.append(f"resume from step {self.checkpoint.step} ({self.checkpoint.path})")
        else:
            lines.append("no verified local checkpoint")
        return lines


def _fail(code: str, reason: str, manifest: Manifest | None = None, sha: str | None = None) -> VerifyResult:
    return VerifyResult(ok=False, reason=reason, manifest=manifest, code=code, manifest_sha256=sha)


def verify_checkpoint(
    path: Path | str,
    *,
    expected_run_id: str | None = None,
    expected_step: int | None = None,
    rehash: bool = True,
    workers: int | None = None,
) -> VerifyResult:
    """Check a committed checkpoint directory against its manifest; never raises for bad input.

    ``rehash=False`` checks presence and sizes only (cheap; for status displays, not for resuming).
    When the directory is named ``step_N`` the manifest's step must be N.
    """
    path = Path(path)
    try:
        if not path.is_dir():
            return _fail(NOT_A_DIRECTORY, f"{path} is not a directory")
        if expected_step is None:
            m = COMMITTED_RE.match(path.name)
            if m:
                expected_step = int(m.group(1))
        try:
            manifest, data = read_manifest(path)
        except ManifestMissing as exc:
            return _fail(NO_MANIFEST, str(exc))
        except ManifestError as exc:
            return _fail(BAD_MANIFEST, str(exc))
        sha = sha256_bytes(data)
        if expected_run_id is not None and manifest.run_id != expected_run_id:
            return _fail(
                WRONG_RUN, f"manifest is for run {manifest.run_id!r}, not {expected_run_id!r}", manifest, sha
            )
        if expected_step is not None and manifest.step != expected_step:
            return _fail(
                STEP_MISMATCH,
                f"manifest says step {manifest.step}, directory says {expected_step}",
                manifest,
                sha,
            )
        problem = _files_problem(path, manifest, rehash=rehash, workers=workers)
        if problem is not None:
            return _fail(problem[0], problem[1], manifest, sha)
        return VerifyResult(ok=True, reason=None, manifest=manifest, code=None, manifest_sha256=sha)
    except OSError as exc:
        return _fail(UNREADABLE, f"cannot read {exc.filename or path}: {exc.strerror or exc}")


def _files_problem(
    path: Path, manifest: Manifest, *, rehash: bool, workers: int | None
) -> tuple[str, str] | None:
    """The first way the directory's files differ from the manifest, as (code, reason); None: they match.
    Missing, extra and unsafe files and sizes first (cheap), then the hashes when ``rehash``."""
    try:
        present = set(list_checkpoint_files(path))
    except InvalidStagedCheckpoint as exc:
        return (UNSAFE_FILE, str(exc))
    listed = {f.path for f in manifest.files}
    missing = sorted(listed - present)
    if missing:
        return (MISSING_FILE, f"missing file {missing[0]}" + _more(missing))
    extra = sorted(present - listed)
    if extra:
        return (EXTRA_FILE, f"file not in manifest: {extra[0]}" + _more(extra))
    for f in manifest.files:
        size = os.stat(path / f.path).st_size
        if size != f.size:
            return (SIZE_MISMATCH, f"{f.path}: size {size} bytes, manifest says {f.size} (truncated?)")
    if rehash:
        actual = hash_tree(path, [f.path for f in manifest.files], workers=workers)
        bad = [
            f.path
            for f, a in zip(manifest.files, actual, strict=True)
            if f.sha256 != a.sha256 or f.size != a.size
        ]
        if bad:
            return (HASH_MISMATCH, f"{bad[0]}: sha256 does not match the manifest" + _more(bad))
    return None


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _incomplete_staged(layout: RunLayout) -> list[SkippedCheckpoint]:
    try:
        ready, invalid = scan_staged(layout.staging_dir)  # invalid ones: the next commit rejects them
        complete = {s.path.name for s in ready} | {s.path.name for s in invalid}
        entries = list(os.scandir(layout.staging_dir))
    except (OSError, CheckpointError):
        return []
    out = []
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name in complete or not entry.is_dir(follow_symlinks=False):
            continue
        if any(p.match(entry.name) for p, _fmt in STAGED_PATTERNS):
            out.append(
                SkippedCheckpoint(
                    Path(entry.path),
                    "staged but never marked complete (no COMPLETE marker): the trainer did not finish writing it",
                    NO_MARKER,
                )
            )
    return out


def find_newest_verified(
    layout: RunLayout, *, rehash: bool = True, workers: int | None = None
) -> RecoveryScan:
    """The newest committed checkpoint that verifies, plus every checkpoint skipped on the way and why.

    Read-only. Incomplete staged directories are reported as skipped (``no_marker``).
    """
    skipped = _incomplete_staged(layout)
    for step, path in committed_step_dirs(layout):
        result = verify_checkpoint(
            path, expected_run_id=layout.run_id, expected_step=step, rehash=rehash, workers=workers
        )
        if result.ok:
            assert result.manifest is not None and result.manifest_sha256 is not None
            ckpt = CommittedCheckpoint(
                step=step,
                path=path,
                manifest_sha256=result.manifest_sha256,
                total_bytes=result.manifest.total_bytes,
                epoch=result.manifest.epoch,
                file_count=len(result.manifest.files),
            )
            return RecoveryScan(ckpt, skipped)
        skipped.append(SkippedCheckpoint(path, result.reason or "invalid", result.code or "invalid"))
    return RecoveryScan(None, skipped)


def recover_local(
    layout: RunLayout,
    *,
    rehash: bool = True,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> RecoveryScan:
    """Before a resume: find the newest verified checkpoint, move the committed ones that failed
    verification to ``ckpt/_quarantine/`` (so a later commit of the same step is not refused), and
    point ``latest`` at the survivor (or remove ``latest`` when none survived). Under the run lock."""
    with checkpoint_lock(layout, lock_timeout_s):
        try:
            return _recover_locked(layout, rehash=rehash)
        except OSError as exc:
            raise CheckpointError(
                f"recovery of {layout.ckpt_dir} failed: {exc.strerror or exc}"
                f"{' (' + str(exc.filename) + ')' if exc.filename else ''}"
            ) from None


def _recover_locked(layout: RunLayout, *, rehash: bool) -> RecoveryScan:
    _housekeeping(layout)
    scan = find_newest_verified(layout, rehash=rehash)
    moved: list[SkippedCheckpoint] = []
    quarantined: list[Path] = []
    for s in scan.skipped:
        if s.path.parent == layout.ckpt_dir and COMMITTED_RE.match(s.path.name):
            layout.quarantine_dir.mkdir(parents=True, exist_ok=True)
            dest = layout.quarantine_dir / (
                f"{s.path.name}.t{time.time_ns()}.{os.getpid()}.{os.urandom(4).hex()}"
            )
            os.rename(s.path, dest)
            quarantined.append(dest)
            moved.append(SkippedCheckpoint(s.path, f"{s.reason} (quarantined to {dest})", s.code))
            log.warning("quarantined %s -> %s: %s", s.path, dest, s.reason)
        else:
            moved.append(s)
    if scan.checkpoint is not None:
        if read_latest_step(layout) != scan.checkpoint.step:
            set_latest(layout, scan.checkpoint.step)
    elif os.path.lexists(layout.latest_link):
        os.unlink(layout.latest_link)
    if layout.ckpt_dir.is_dir():
        fsync_dir(layout.ckpt_dir)
    if quarantined:
        prune_quarantine(layout, keep=QUARANTINE_KEEP, protect=quarantined)
    return RecoveryScan(scan.checkpoint, moved)


def _quarantined_at(entry: os.DirEntry[str]) -> int:
    """When a quarantine entry was made: the ``.t<ns>.`` in its name, else (older names) its mtime."""
    parts = entry.name.split(".")
    if len(parts) > 1 and parts[1].startswith("t") and parts[1][1:].isdigit():
        return int(parts[1][1:])
    try:
        return entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return 0


def prune_quarantine(
    layout: RunLayout, *, keep: int = QUARANTINE_KEEP, protect: Sequence[Path] = ()
) -> list[Path]:
    """Caller holds the lock. Delete all but the newest ``keep`` entries of ``ckpt/_quarantine`` (those in
    ``protect``, the ones the current recovery just moved there, always stay); returns what was deleted."""
    try:
        entries = list(os.scandir(layout.quarantine_dir))
    except FileNotFoundError:
        return []
    kept = {Path(p).name for p in protect}
    older = sorted((e for e in entries if e.name not in kept), key=_quarantined_at, reverse=True)
    doomed = [Path(e.path) for e in older[max(0, keep - len(kept)) :]]
    for path in doomed:
        move_to_trash(path, layout.trash_dir)
    if doomed:
        empty_dir(layout.trash_dir)
        log.info("dropped %d old quarantined checkpoint(s) (keeping the newest %d)", len(doomed), keep)
    return doomed


def read_committed(path: Path | str) -> CommittedCheckpoint:
    """A committed checkpoint from its manifest alone (no hashing); raises ManifestError."""
    path = Path(path)
    manifest, data = read_manifest(path)
    return committed_from_manifest(path, manifest, data)


def latest_committed(layout: RunLayout) -> CommittedCheckpoint | None:
    """The checkpoint ``ckpt/latest`` names, from its manifest (no hashing); None when there is none."""
    step = read_latest_step(layout)
    if step is None:
        return None
    try:
        return read_committed(layout.step_dir(step))
    except ManifestError:
        return None
