"""The run's deliverable: the trainer's final export (RELAY_FINAL_DIR), sealed with a manifest.

What a trainer writes at the end of a finished run (``save_model``: weights or LoRA adapter, tokenizer,
config; whatever else it puts in its output directory) is what users want from the run.  The worker seals
that directory like a checkpoint: a ``manifest.json`` listing every file's size and sha256, for the run, the
final step and the lease epoch.  The remote publishes it under ``<run_id>/final/`` in one fenced commit,
and ``relayctl pull RUN --final`` downloads it and checks every byte against that manifest.

Loaders read such a directory as they read any export (``from_pretrained(repo, subfolder="<run>/final")``):
``manifest.json`` is one more file they ignore.
"""

from __future__ import annotations

from pathlib import Path

from relay.ckpt.errors import CheckpointError
from relay.ckpt.fsutil import atomic_write_bytes, fsync_tree_dirs, sha256_bytes
from relay.ckpt.layout import MANIFEST_NAME
from relay.ckpt.manifest import (
    FORMAT_VERSION,
    CommittedCheckpoint,
    Manifest,
    hash_tree,
    list_checkpoint_files,
    now_iso,
)

__all__ = ["FINAL_DIRNAME", "FINAL_SOURCE", "seal_final"]

FINAL_DIRNAME = "final"
FINAL_SOURCE = "final"  # the manifest's ``source``: tells a final export from a checkpoint


def seal_final(path: Path, *, run_id: str, step: int, epoch: int) -> CommittedCheckpoint:
    """Hash (and fsync) every file of the export in ``path`` and write its ``manifest.json`` last.

    Raises CheckpointError when the directory is missing or empty, InvalidStagedCheckpoint when it holds
    something that cannot be shipped (a symlink, a special file)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"final export {path} does not exist: the trainer wrote no final export")
    rels = list_checkpoint_files(path)
    if not rels:
        raise CheckpointError(f"final export {path} is empty: the trainer wrote no final export")
    try:
        entries = hash_tree(path, rels, fsync=True)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            run_id=run_id,
            step=step,
            epoch=epoch,
            created_at=now_iso(),
            files=tuple(entries),
            source=FINAL_SOURCE,
        )
        data = manifest.to_json_bytes()
        atomic_write_bytes(path / MANIFEST_NAME, data)
        fsync_tree_dirs(path)
    except OSError as exc:
        raise CheckpointError(f"cannot seal final export {path}: {exc.strerror or exc}") from None
    return CommittedCheckpoint(
        step=step,
        path=path,
        manifest_sha256=sha256_bytes(data),
        total_bytes=manifest.total_bytes,
        epoch=epoch,
        file_count=len(entries),
    )
