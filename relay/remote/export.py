"""The run's final export on a remote, and pulls for people: ``relayctl pull RUN [--step N | --final] DEST``.

A finished run's export (relay.ckpt.final: the trainer's ``save_model`` output, sealed with a manifest) is
published under ``<run_id>/final/`` by the backends' ``push_final``, in one commit fenced like a checkpoint
push.  ``pull_export`` downloads that export, or any checkpoint, for a user: every byte is checked against
the remote manifest before the copy is renamed into place, so a corrupted copy is refused and nothing half
written is left at the destination.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from relay.ckpt.errors import ManifestError
from relay.ckpt.layout import MANIFEST_NAME
from relay.ckpt.manifest import Manifest
from relay.ckpt.verify import verify_checkpoint
from relay.remote.base import (
    Remote,
    RemoteCorruptError,
    RemoteError,
    RemoteFencedError,
    RemoteState,
    Snapshot,
    remote_ckpt_prefix,
)
from relay.remote.progress import tty_progress

__all__ = ["FINAL_DIR", "PulledExport", "check_final_fence", "pull_export", "remote_final_prefix"]

FINAL_DIR = "final"


def remote_final_prefix(run_id: str) -> str:
    """``<run_id>/final``: where the run's final export (relay.ckpt.final) is published."""
    return f"{run_id}/{FINAL_DIR}"


def check_final_fence(state: RemoteState | None, *, epoch: int, where: str) -> None:
    """A final export is fenced like a push: a holder of an older epoch than the remote's never publishes."""
    if state is not None and state.epoch > epoch:
        raise RemoteFencedError(
            remote_epoch=state.epoch, push_epoch=epoch, remote_step=state.step, where=where
        )


@dataclass(frozen=True)
class PulledExport:
    """A final export or checkpoint downloaded by :meth:`Remote.pull_export`, verified against its manifest."""

    path: Path
    manifest: Manifest
    what: str  # "final export" or "checkpoint step N"
    bytes_received: int


def _export_prefix(
    remote: Remote, snap: Snapshot, step: int | None, final: bool
) -> tuple[str, str, int | None]:
    """(remote prefix, description, expected step or None) of what ``pull_export`` was asked for."""
    if final:
        return remote_final_prefix(remote.run_id), "final export", None
    if step is None:
        if snap.state is not None:
            step = snap.state.step
        elif snap.steps:
            step = max(snap.steps)
        else:
            raise RemoteError(
                f"{remote.url}: no checkpoint of run {remote.run_id} on the remote", retryable=False
            )
    return remote_ckpt_prefix(remote.run_id, step), f"checkpoint step {step}", step


def pull_export(
    remote: Remote, dest: Path, *, step: int | None = None, final: bool = False, progress: bool = True
) -> PulledExport:
    """Download the run's final export (``final``), checkpoint ``step``, or the newest checkpoint into
    ``dest`` (which must not exist, or be empty), verified file by file against the remote manifest.

    The files land in a temporary directory next to ``dest`` that is renamed into place only once every
    file matches; a copy that does not verify raises RemoteCorruptError and leaves nothing behind."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RemoteError(
            f"{dest} exists and is not an empty directory; refusing to overwrite it", retryable=False
        )
    snap = remote._snapshot(None)
    prefix, what, expected_step = _export_prefix(remote, snap, step, final)
    where = f"{remote.url} {prefix}"
    data = remote._read_bytes(snap, f"{prefix}/{MANIFEST_NAME}")
    if data is None:
        raise RemoteError(f"{where}: no {what} of run {remote.run_id} on the remote", retryable=False)
    try:
        manifest = Manifest.from_json_bytes(data, origin=where)
    except ManifestError as exc:
        raise RemoteCorruptError(str(exc)) from None
    if manifest.run_id != remote.run_id or (expected_step is not None and manifest.step != expected_step):
        raise RemoteCorruptError(f"{where}: manifest is for run {manifest.run_id!r} step {manifest.step}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".relay-pull-{dest.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    received = [0]
    bar = tty_progress(manifest.total_bytes, f"pull {what}") if progress else None

    def on_bytes(n: int) -> None:
        received[0] += n
        if bar is not None:
            bar.update(n)

    try:
        try:
            remote._download_files(snap, prefix, manifest.files, tmp, on_bytes)
        except FileNotFoundError as exc:
            raise RemoteCorruptError(f"{where}: the remote is missing {exc.filename or exc}") from None
        (tmp / MANIFEST_NAME).write_bytes(data)
        result = verify_checkpoint(tmp, expected_run_id=remote.run_id, expected_step=manifest.step)
        if not result.ok:
            raise RemoteCorruptError(f"{where}: the downloaded copy does not verify: {result.reason}")
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PulledExport(dest, manifest, what, received[0])
