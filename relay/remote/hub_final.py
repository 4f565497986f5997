"""The Hub remote's final-export push (``HubRemote.push_final``), kept apart from the checkpoint push.

One ``create_commit`` holds every file of the export under ``<run_id>/final/``, its manifest.json, and the
deletion of any file an earlier final export had and this one has not; ``parent_commit`` is the head the
fencing check read state.json at, so a newer lease holder's commit in between (412) sends us back to the
check.  Files the repo already holds (the final weights are often byte-identical to the last checkpoint's)
go up as LFS pointers, 0 bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from relay.ckpt.errors import ManifestError
from relay.ckpt.layout import MANIFEST_NAME
from relay.ckpt.manifest import CommittedCheckpoint, Manifest
from relay.remote.base import PushResult, RemoteError, load_local_manifest
from relay.remote.export import check_final_fence, remote_final_prefix

if TYPE_CHECKING:
    from relay.remote.hub import HubRemote

log = logging.getLogger(__name__)


def push_final(remote: HubRemote, export: CommittedCheckpoint, *, epoch: int) -> PushResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    from relay.remote.hub_api import HeadMoved

    manifest, mbytes = load_local_manifest(export, run_id=remote.run_id)
    prefix = remote_final_prefix(remote.run_id)
    where = f"{remote.url}/{prefix}"
    remote._ensure_repo()
    for attempt in range(1, remote.max_cas_retries + 1):
        head = remote._head()
        state = remote._read_state(head) if head else None
        check_final_fence(state, epoch=epoch, where=where)
        old_bytes = remote._read_file(f"{prefix}/{MANIFEST_NAME}", head) if head else None
        if old_bytes == mbytes:
            return PushResult(
                manifest.step, head, 0, 0, len(manifest.files), noop=True, detail="same final export"
            )
        held: set[str] = set()
        for step, tree_id in (remote._list_steps(head) if head else {}).items():
            m = remote._remote_manifest(head, step, tree_id)
            if m is not None:
                held.update(f.sha256 for f in m.files)
        old = _old_paths(old_bytes, where)
        held.update(sha for _path, sha in old)
        to_send = [f for f in manifest.files if f.sha256 not in held]
        remote._check_local(export, to_send)
        ops: list = []
        for f in manifest.files:
            op = CommitOperationAdd(f"{prefix}/{f.path}", str(Path(export.path) / f.path))
            op.upload_info.sha256 = bytes.fromhex(f.sha256)
            ops.append(op)
        ops.append(CommitOperationAdd(f"{prefix}/{MANIFEST_NAME}", mbytes))
        keep = {f.path for f in manifest.files}
        ops += [CommitOperationDelete(f"{prefix}/{p}") for p, _sha in old if p not in keep]
        message = f"relay: {remote.run_id} final export (step {manifest.step}, epoch {epoch})"
        try:
            oid = remote._commit(ops, message, head)
        except HeadMoved:
            log.info(
                "%s: head moved during the final export push (attempt %d); re-reading state", where, attempt
            )
            continue
        sent = sum(f.size for f in to_send)
        return PushResult(manifest.step, oid, sent, len(to_send), len(manifest.files) - len(to_send))
    raise RemoteError(
        f"{where}: head kept moving; gave up after {remote.max_cas_retries} attempts", retryable=True
    )


def _old_paths(old_bytes: bytes | None, where: str) -> list[tuple[str, str]]:
    """(path, sha256) of the files the remote's current final export lists (none when it has none)."""
    if old_bytes is None:
        return []
    try:
        old = Manifest.from_json_bytes(old_bytes, origin=where)
    except ManifestError:  # a broken old manifest: what we push replaces it
        return []
    return [(f.path, f.sha256) for f in old.files]
