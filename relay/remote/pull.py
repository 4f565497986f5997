"""The shared pull of every remote: the newest remote checkpoint that verifies, onto this volume.

``Remote.pull_newest`` (``relay.remote.base``) is the entry point; the backends supply three primitives
(a consistent snapshot, a manifest's bytes, a download of some files) and this module does the rest,
the same way for each: candidates in ``pull_candidates`` order, each manifest checked against
``relay/state.json``, files the volume already holds linked instead of downloaded (``relay.ckpt.reuse``),
the copy verified whole, then installed under the run lock (``relay.ckpt.install``).  A candidate that
fails is skipped with a reason; a transport failure raises; ``cancel()`` stops a pull between chunks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from relay.ckpt.errors import ManifestError
from relay.ckpt.fsutil import empty_dir, sha256_bytes
from relay.ckpt.install import install_pulled, same_local
from relay.ckpt.layout import CKPT_DIR_FMT, MANIFEST_NAME, RunLayout
from relay.ckpt.manifest import CommittedCheckpoint, Manifest
from relay.ckpt.reuse import link_known, local_blobs
from relay.ckpt.verify import SkippedCheckpoint, verify_checkpoint
from relay.remote.base import (
    PullReport,
    Snapshot,
    pull_candidates,
    remote_ckpt_prefix,
)
from relay.remote.errors import PullCancelled, RemoteCorruptError
from relay.remote.progress import tty_progress

if TYPE_CHECKING:
    from relay.remote.base import Remote

log = logging.getLogger("relay.remote.base")

Skip = Callable[[str, str], None]


def pull_newest(
    remote: Remote,
    layout: RunLayout,
    revision: str | None,
    cancel: Callable[[], bool] | None,
    report: PullReport,
) -> CommittedCheckpoint | None:
    """See ``Remote.pull_newest``; ``report`` is filled in as the pull goes."""
    stop = cancel or _never
    snap = remote._snapshot(revision)
    report.revision = snap.revision
    candidates, early = pull_candidates(snap.state, snap.steps)
    report.skipped.extend(
        SkippedCheckpoint(Path(remote_ckpt_prefix(remote.run_id, s)), r, "superseded") for s, r in early
    )
    if not candidates and (snap.state is None or snap.state.step is None):
        return None  # nothing was ever published (at most claimed, or a fenced writer's leftovers)
    layout.ensure()
    empty_dir(layout.incoming_dir)
    for step in candidates:
        where = f"{remote.url} {remote_ckpt_prefix(remote.run_id, step)}"

        def skip(reason: str, code: str, _where: str = where) -> None:
            log.warning("pull: skipping %s: %s", _where, reason)
            report.skipped.append(SkippedCheckpoint(Path(_where), reason, code))

        found = _candidate_manifest(remote, snap, step, skip)
        if found is None:
            continue
        manifest, data, msha = found
        local = same_local(layout, step, msha)
        if local is not None:
            report.step, report.reused_local = step, True
            return local
        committed = _fetch_verified(remote, snap, layout, manifest, data, report, skip, stop)
        if committed is None and report.files_reused:  # a reused local file rotted: once more, all fresh
            committed = _fetch_verified(remote, snap, layout, manifest, data, report, skip, stop, reuse=False)
        if committed is not None:
            report.step = step
            return committed
    reasons = "; ".join(f"{s.path}: {s.reason}" for s in report.skipped) or "no checkpoints listed"
    raise RemoteCorruptError(
        f"{remote.url}: no remote checkpoint for run {remote.run_id} verifies ({reasons})"
    )


def _candidate_manifest(
    remote: Remote, snap: Snapshot, step: int, skip: Skip
) -> tuple[Manifest, bytes, str] | None:
    """The manifest of remote checkpoint ``step`` (parsed, its bytes, their sha256), or None (skipped)."""
    data = remote._read_manifest_bytes(snap, step)
    if data is None:
        skip("no manifest.json on the remote", "no_manifest")
        return None
    msha = sha256_bytes(data)
    if snap.state is not None and step == snap.state.step and msha != snap.state.manifest_sha256:
        skip("manifest.json does not match the sha256 in relay/state.json", "hash_mismatch")
        return None
    try:
        manifest = Manifest.from_json_bytes(
            data, origin=f"{remote.url} {remote_ckpt_prefix(remote.run_id, step)}"
        )
    except ManifestError as exc:
        skip(str(exc), "bad_manifest")
        return None
    if manifest.run_id != remote.run_id or manifest.step != step:
        skip(f"manifest is for run {manifest.run_id!r} step {manifest.step}", "wrong_run")
        return None
    return manifest, data, msha


def _fetch_verified(
    remote: Remote,
    snap: Snapshot,
    layout: RunLayout,
    manifest: Manifest,
    data: bytes,
    report: PullReport,
    skip: Skip,
    cancel: Callable[[], bool],
    *,
    reuse: bool = True,
) -> CommittedCheckpoint | None:
    """Link what the volume holds, download the rest, verify the whole and install it; None: skipped."""
    step = manifest.step
    empty_dir(layout.incoming_dir)
    tmp = layout.incoming_dir / f"{CKPT_DIR_FMT % step}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    linked = link_known(manifest.files, local_blobs(layout) if reuse else {}, tmp)
    report.files_reused, report.bytes_reused = linked.files, linked.bytes
    missing = tuple(linked.missing)
    bar = tty_progress(sum(f.size for f in missing), f"pull step {step}")
    received = [0]

    def on_bytes(n: int) -> None:
        received[0] += n
        if bar is not None:
            bar.update(n)
        if cancel():
            raise PullCancelled(f"pull of step {step} from {remote.url} cancelled")

    try:
        if cancel():
            raise PullCancelled(f"pull of step {step} from {remote.url} cancelled")
        if missing:
            remote._download(snap, step, missing, tmp, on_bytes)
    except FileNotFoundError as exc:
        skip(f"remote is missing {exc.filename or exc}", "missing_file")
        empty_dir(layout.incoming_dir)
        return None
    finally:
        if bar is not None:
            bar.close()
        report.bytes_received += received[0]
        report.files_received = len(missing)
    (tmp / MANIFEST_NAME).write_bytes(data)
    result = verify_checkpoint(tmp, expected_run_id=remote.run_id, expected_step=step)
    if not result.ok:
        skip(f"downloaded copy does not verify: {result.reason}", result.code or "invalid")
        empty_dir(layout.incoming_dir)
        return None
    return install_pulled(layout, tmp, manifest, data)


def _never() -> bool:
    return False
