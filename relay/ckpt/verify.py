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
from dataclasses import dataclass, field
from pathlib import Path

from relay.ckpt.commit import (
    DEFAULT_LOCK_TIMEOUT_S,
    STAGED_PATTERNS,
    _housekeeping,
    checkpoint_lock,
    find_complete_staged,
    set_latest,
)
from relay.ckpt.errors import CheckpointError, InvalidStagedCheckpoint, ManifestError, ManifestMissing
from relay.ckpt.fsutil import fsync_dir, sha256_bytes
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
        try:
            present = set(list_checkpoint_files(path))
        except InvalidStagedCheckpoint as exc:
            return _fail(UNSAFE_FILE, str(exc), manifest, sha)
        listed = {f.path for f in manifest.files}
        missing = sorted(listed - present)
        if missing:
            return _fail(MISSING_FILE, f"missing file {missing[0]}" + _more(missing), manifest, sha)
        extra = sorted(present - listed)
        if extra:
            return _fail(EXTRA_FILE, f"file not in manifest: {extra[0]}" + _more(extra), manifest, sha)
        for f in manifest.files:
            size = os.stat(path / f.path).st_size
            if size != f.size:
                return _fail(
                    SIZE_MISMATCH,
                    f"{f.path}: size {size} bytes, manifest says {f.size} (truncated?)",
                    manifest,
                    sha,
                )
        if rehash:
            actual = hash_tree(path, [f.path for f in manifest.files], workers=workers)
            bad = [
                f.path
                for f, a in zip(manifest.files, actual, strict=True)
                if f.sha256 != a.sha256 or f.size != a.size
            ]
            if bad:
                return _fail(
                    HASH_MISMATCH, f"{bad[0]}: sha256 does not match the manifest" + _more(bad), manifest, sha
                )
        return VerifyResult(ok=True, reason=None, manifest=manifest, code=None, manifest_sha256=sha)
    except OSError as exc:
        return _fail(UNREADABLE, f"cannot read {exc.filename or path}: {exc.strerror or exc}")


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _incomplete_staged(layout: RunLayout) -> list[SkippedCheckpoint]:
    try:
        complete = {s.path.name for s in find_complete_staged(layout.staging_dir)}
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
    for s in scan.skipped:
        if s.path.parent == layout.ckpt_dir and COMMITTED_RE.match(s.path.name):
            layout.quarantine_dir.mkdir(parents=True, exist_ok=True)
            dest = layout.quarantine_dir / f"{s.path.name}.{os.getpid()}.{os.urandom(4).hex()}"
            os.rename(s.path, dest)
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
    return RecoveryScan(scan.checkpoint, moved)


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
