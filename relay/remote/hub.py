"""The Hugging Face Hub remote (``hf://owner/repo``), through huggingface_hub.

One push = one ``create_commit`` holding the checkpoint's files, its manifest.json and the new
``<run_id>/relay/state.json``, with ``parent_commit`` set to the head we read state.json at. If
the head moved meanwhile the Hub answers 412, and we re-read state.json and re-run the fencing
check before trying again, so a fenced-off worker can never overwrite a newer lease's state.
(``upload_folder`` is never used: it may split one upload into several commits.)

Bytes: every checkpoint file goes through LFS (a ``.gitattributes`` rule for ``*/checkpoints/**``
is committed once, when the repo is prepared). LFS is content-addressed: the batch endpoint
answers "already have it" for a sha256 the repo holds, so a file unchanged since an earlier
checkpoint is committed as a pointer and sends 0 bytes, and an upload interrupted after some
blobs landed resumes with the rest. ``PushResult.bytes_sent`` counts the files whose sha256 no
manifest on the remote lists (an upper bound of what crossed the wire). Files that will be sent
are rehashed first, so a locally corrupted file is never published under its manifest's hash.

Pulls are pinned to a commit sha: state.json, the listing, manifests and every file are read at
that sha, with ``hf_hub_download`` into a fresh directory (never reusing stale local files).

Token: ``token=`` or ``HF_TOKEN``; endpoint: ``endpoint=`` or ``HF_ENDPOINT``. Xet is used only
when huggingface_hub would use it (``HF_HUB_DISABLE_XET=1`` turns it off, also after import).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from relay.ckpt.fsutil import sha256_bytes
from relay.ckpt.layout import MANIFEST_NAME
from relay.ckpt.manifest import CommittedCheckpoint, FileEntry, Manifest, hash_tree
from relay.remote.base import (
    PushResult,
    Remote,
    RemoteError,
    RemoteState,
    Snapshot,
    check_prune_epoch,
    decide_claim,
    decide_push,
    leftover_steps,
    load_local_manifest,
    prune_plan,
    published_state,
    remote_ckpt_prefix,
    remote_state_path,
    superseded_steps,
)
from relay.remote.hub_api import (
    FINAL_LFS_RULE,
    GITATTRIBUTES,
    LFS_RULE,
    LFS_RULES,
    HeadMoved,
    HubAccess,
    RemoteMissing,
    log,
)

__all__ = ["FINAL_LFS_RULE", "GITATTRIBUTES", "LFS_RULE", "LFS_RULES", "HubRemote"]


class HubRemote(HubAccess, Remote):
    def __repr__(self) -> str:
        return f"HubRemote({self.url!r}, run_id={self.run_id!r}, endpoint={self.endpoint!r})"

    # -- the contract ----------------------------------------------------------------------------
    def state(self) -> RemoteState | None:
        head = self._head()
        return None if head is None else self._read_state(head)

    def list_steps(self) -> list[int]:
        head = self._head()
        return [] if head is None else sorted(self._list_steps(head), reverse=True)

    def claim(self, epoch: int, *, lease_id: str) -> RemoteState:
        from huggingface_hub import CommitOperationAdd

        where = f"{self.url}/{self.run_id}"
        self._ensure_repo()
        for _ in range(self.max_cas_retries):
            head = self._head()
            state = self._read_state(head) if head else None
            new = decide_claim(state, self.run_id, epoch=epoch, lease_id=lease_id, where=where)
            if new is None:
                assert state is not None
                return state
            steps = self._list_steps(head) if head else {}
            ops: list = [CommitOperationAdd(remote_state_path(self.run_id), new.to_json_bytes())]
            ops += self._deletes(leftover_steps(state, list(steps)))
            try:  # parent_commit: a push or claim that landed since we read state.json is never overwritten
                oid = self._commit(ops, f"relay: {self.run_id} claimed by epoch {epoch}", head)
            except HeadMoved:
                continue
            log.info("%s: claimed at epoch %d (%s)", where, epoch, new.describe())
            return replace(new, revision=oid)
        raise RemoteError(f"{self.url}: head kept moving during the claim", retryable=True)

    def push(self, ckpt: CommittedCheckpoint, *, epoch: int) -> PushResult:
        manifest, mbytes = load_local_manifest(ckpt, run_id=self.run_id)
        msha = sha256_bytes(mbytes)
        step = manifest.step
        where = f"{self.url}/{self.run_id}"
        self._ensure_repo()
        checked: set[str] = set()
        for attempt in range(1, self.max_cas_retries + 1):
            head = self._head()
            state = self._read_state(head) if head else None
            noop = decide_push(state, step=step, epoch=epoch, manifest_sha256=msha, where=where)
            if noop:
                return PushResult(step, head, 0, 0, len(manifest.files), noop=True, detail=noop)
            steps = self._list_steps(head) if head else {}
            to_send = self._unheld(head, steps, manifest)
            self._check_local(ckpt, [f for f in to_send if f.path not in checked])
            checked.update(f.path for f in to_send)
            new = published_state(state, self.run_id, step=step, epoch=epoch, manifest_sha256=msha)
            ops = self._push_ops(ckpt, manifest, mbytes, new)
            ops += self._deletes(superseded_steps(state, list(steps), push_step=step, push_epoch=epoch))
            try:  # parent_commit = the head whose state.json was checked: the compare-and-swap
                oid = self._commit(ops, f"relay: {self.run_id} step {step} (epoch {epoch})", head)
            except HeadMoved:
                log.info(
                    "%s: head moved during push of step %d (attempt %d); re-reading state",
                    self.url,
                    step,
                    attempt,
                )
                continue
            return PushResult(
                step,
                oid,
                bytes_sent=sum(f.size for f in to_send),
                files_sent=len(to_send),
                files_skipped=len(manifest.files) - len(to_send),
            )
        raise RemoteError(
            f"{self.url}: head kept moving; gave up after {self.max_cas_retries} attempts", retryable=True
        )

    def _unheld(self, head: str | None, steps: dict[int, str], manifest: Manifest) -> list[FileEntry]:
        """The checkpoint's files whose sha256 no manifest on the remote lists (what will be sent)."""
        held: set[str] = set()
        for s, tree_id in steps.items():
            m = self._remote_manifest(head, s, tree_id) if head else None
            if m is not None:
                held.update(f.sha256 for f in m.files)
        return [f for f in manifest.files if f.sha256 not in held]

    def _push_ops(
        self, ckpt: CommittedCheckpoint, manifest: Manifest, mbytes: bytes, new: RemoteState
    ) -> list:
        """The commit's additions: every checkpoint file, its manifest, and the new state.json."""
        from huggingface_hub import CommitOperationAdd

        prefix = remote_ckpt_prefix(self.run_id, manifest.step)
        ops: list = []
        for f in manifest.files:
            local = Path(ckpt.path) / f.path
            try:
                op = CommitOperationAdd(f"{prefix}/{f.path}", str(local))
            except ValueError:  # huggingface_hub's "is not a file": pruned under us
                raise RemoteError(
                    f"local checkpoint file {local} is gone (pruned?); not pushing step {manifest.step}",
                    retryable=False,
                ) from None
            op.upload_info.sha256 = bytes.fromhex(f.sha256)  # known: no second hashing pass
            ops.append(op)
        ops.append(CommitOperationAdd(f"{prefix}/{MANIFEST_NAME}", mbytes))
        ops.append(CommitOperationAdd(remote_state_path(self.run_id), new.to_json_bytes()))
        return ops

    def _deletes(self, steps: list[int]) -> list:
        from huggingface_hub import CommitOperationDelete

        return [
            CommitOperationDelete(remote_ckpt_prefix(self.run_id, s) + "/", is_folder=True) for s in steps
        ]

    def _check_local(self, ckpt: CommittedCheckpoint, files: list[FileEntry]) -> None:
        """Rehash the files we are about to upload: never publish corrupt bytes under a manifest's hash."""
        if not files:
            return
        try:
            actual = hash_tree(Path(ckpt.path), [f.path for f in files])
        except OSError as exc:
            raise RemoteError(
                f"cannot read local checkpoint {ckpt.path}: {exc.strerror or exc}", retryable=False
            ) from None
        for f, a in zip(files, actual, strict=True):
            if (f.size, f.sha256) != (a.size, a.sha256):
                raise RemoteError(
                    f"local file {Path(ckpt.path) / f.path} no longer matches its manifest; the local checkpoint "
                    "is corrupt, not pushing it",
                    retryable=False,
                )

    def prune(self, keep_last_n: int, *, epoch: int | None = None) -> list[int]:
        for _ in range(self.max_cas_retries):
            head = self._head()
            if head is None:
                return []
            state = self._read_state(head)
            check_prune_epoch(state, epoch, f"{self.url}/{self.run_id}")
            steps = self._list_steps(head)
            doomed = prune_plan(state, list(steps), keep_last_n)
            if not doomed:
                return []
            try:
                self._commit(self._deletes(doomed), f"relay: {self.run_id} prune steps {doomed}", head)
            except HeadMoved:
                continue
            log.info("%s: pruned remote steps %s", self.url, doomed)
            return doomed
        raise RemoteError(f"{self.url}: head kept moving during prune", retryable=True)

    def push_final(self, export: CommittedCheckpoint, *, epoch: int) -> PushResult:
        from relay.remote.hub_final import push_final

        return push_final(self, export, epoch=epoch)

    # -- pull primitives -------------------------------------------------------------------------
    def _snapshot(self, revision: str | None) -> Snapshot:
        sha = self._head(revision)
        if sha is None:
            return Snapshot(None, None, [])
        state = self._read_state(sha)
        steps = sorted(self._list_steps(sha), reverse=True)
        return Snapshot(sha, state, steps)

    def _read_manifest_bytes(self, snap: Snapshot, step: int) -> bytes | None:
        assert snap.revision is not None
        return self._read_file(f"{remote_ckpt_prefix(self.run_id, step)}/{MANIFEST_NAME}", snap.revision)

    def _download(
        self,
        snap: Snapshot,
        step: int,
        files: tuple[FileEntry, ...],
        dest: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._download_files(snap, remote_ckpt_prefix(self.run_id, step), files, dest, on_bytes)

    def _read_bytes(self, snap: Snapshot, path: str) -> bytes | None:
        if snap.revision is None:
            return None
        return self._read_file(path, snap.revision)

    def _download_files(
        self,
        snap: Snapshot,
        prefix: str,
        files: tuple[FileEntry, ...],
        dest: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError
        from tqdm.auto import tqdm

        class _Forward(tqdm):  # hub's per-file bars stay silent; bytes feed our single bar
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                kwargs.pop("name", None)
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                if n:
                    on_bytes(int(n))
                return None

        assert snap.revision is not None
        scratch = dest.with_name(dest.name + ".dl")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            for f in files:

                def fetch(f: FileEntry = f) -> str:
                    try:
                        return hf_hub_download(
                            self.repo_id,
                            f"{prefix}/{f.path}",
                            revision=snap.revision,
                            local_dir=scratch,
                            endpoint=self.endpoint,
                            token=self.token,
                            tqdm_class=_Forward,
                        )
                    except RemoteEntryNotFoundError:
                        raise RemoteMissing(2, "not on the remote", f"{prefix}/{f.path}") from None

                try:
                    got = self._call(fetch, f"downloading {prefix}/{f.path}")
                except HeadMoved:  # pragma: no cover - never from a download
                    raise RemoteError(f"{self.url}: unexpected 412 on download", retryable=True) from None
                target = dest / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(got, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
