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

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from relay.ckpt.errors import ManifestError
from relay.ckpt.fsutil import sha256_bytes
from relay.ckpt.layout import COMMITTED_RE, MANIFEST_NAME
from relay.ckpt.manifest import CommittedCheckpoint, FileEntry, Manifest, hash_tree, now_iso
from relay.ids import validate_id
from relay.remote.base import (
    CHECKPOINTS_DIR,
    PushResult,
    Remote,
    RemoteCorruptError,
    RemoteError,
    RemoteState,
    Snapshot,
    by_url_rule,
    decide_push,
    load_local_manifest,
    prune_plan,
    remote_ckpt_prefix,
    remote_state_path,
    superseded_steps,
)
from relay.urls import check_repo_id

log = logging.getLogger(__name__)

GITATTRIBUTES = ".gitattributes"
LFS_RULE = "*/checkpoints/** filter=lfs diff=lfs merge=lfs -text"
FINAL_LFS_RULE = "*/final/** filter=lfs diff=lfs merge=lfs -text"
LFS_RULES = (LFS_RULE, FINAL_LFS_RULE)
_RETRYABLE_STATUS = {408, 425, 429}


class _HeadMoved(Exception):
    """412 from create_commit: someone committed after we read the head."""


class _RemoteMissing(FileNotFoundError):
    """The file is not at that revision (404 EntryNotFound) -- unlike huggingface_hub's
    LocalEntryNotFoundError, which means the Hub could not be reached."""


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


class HubRemote(Remote):
    def __init__(
        self,
        repo_id: str,
        run_id: str,
        *,
        token: str | None = None,
        endpoint: str | None = None,
        branch: str = "main",
        private: bool = True,
        max_cas_retries: int = 8,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__()
        self.run_id = validate_id(run_id, "run_id")
        self.repo_id = by_url_rule(check_repo_id, repo_id)
        self.token = token if token is not None else (os.environ.get("HF_TOKEN") or None)
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
        self.branch = branch
        self.private = private
        self.max_cas_retries = max_cas_retries
        self.timeout_s = timeout_s
        self.url = f"hf://{repo_id}"
        self._api_obj: Any = None
        self._repo_ready = False
        self._manifest_cache: dict[str, Manifest] = {}

    def __repr__(self) -> str:
        return f"HubRemote({self.url!r}, run_id={self.run_id!r}, endpoint={self.endpoint!r})"

    # -- plumbing --------------------------------------------------------------------------------
    def _api(self) -> Any:
        if self._api_obj is None:
            from huggingface_hub import HfApi, constants

            if _is_true(os.environ.get("HF_HUB_DISABLE_XET")):
                constants.HF_HUB_DISABLE_XET = True  # the env var is read at import; honour a later setting
            self._api_obj = HfApi(endpoint=self.endpoint, token=self.token)
        return self._api_obj

    def _classify(self, exc: BaseException, what: str) -> RemoteError:
        """Turn anything huggingface_hub / httpx raised into a one-line RemoteError with ``retryable``."""
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        chain: list[BaseException] = []
        e: BaseException | None = exc
        while e is not None and len(chain) < 10:
            chain.append(e)
            e = e.__cause__ or e.__context__
        for e in chain:
            if isinstance(e, RemoteError):
                return e
            response = getattr(e, "response", None)
            if isinstance(e, HfHubHTTPError) and response is not None:
                status = response.status_code
                retry_after = None
                try:
                    retry_after = float(response.headers.get("Retry-After"))
                except (TypeError, ValueError):
                    pass
                hint = ""
                if isinstance(e, RepositoryNotFoundError) or status in (401, 403):
                    hint = " (check the repo id and that HF_TOKEN can write to it)"
                detail = e.server_message or _first_line(str(e))
                return RemoteError(
                    f"{self.url}: {what} failed: HTTP {status}: {detail}{hint}",
                    retryable=status in _RETRYABLE_STATUS or status >= 500,
                    retry_after_s=retry_after,
                )
        for e in chain:
            mod = type(e).__module__ or ""
            if mod.startswith(("httpx", "httpcore", "h11", "ssl")) or isinstance(
                e, (ConnectionError, TimeoutError)
            ):
                return RemoteError(
                    f"{self.url}: {what} failed: network error: {type(e).__name__}: {e}", retryable=True
                )
        return RemoteError(
            f"{self.url}: {what} failed: {type(exc).__name__}: {_first_line(str(exc))}", retryable=True
        )

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except (RemoteError, _RemoteMissing):
            raise
        except Exception as exc:  # noqa: BLE001 - every library failure becomes a typed RemoteError
            from huggingface_hub.errors import HfHubHTTPError

            if isinstance(exc, HfHubHTTPError) and getattr(exc.response, "status_code", None) == 412:
                raise _HeadMoved() from None
            raise self._classify(exc, what) from exc

    def _head(self, revision: str | None = None) -> str | None:
        """The commit sha of ``revision`` (default: the branch head); None when the repo/branch is absent."""
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        api = self._api()
        try:
            info = api.repo_info(
                self.repo_id, revision=revision or self.branch, repo_type="model", timeout=self.timeout_s
            )
        except RevisionNotFoundError:
            if revision is not None:
                raise RemoteError(f"{self.url}: revision {revision} not found", retryable=False) from None
            return None
        except RepositoryNotFoundError:
            if revision is not None:
                raise RemoteError(f"{self.url}: repository not found", retryable=False) from None
            if not self._have_token():
                # The Hub answers "not found" for private repos we cannot see: without a token that is
                # not evidence the remote is empty, so never let a pull read it as "nothing there".
                raise RemoteError(
                    f"{self.url}: repository not found or not visible without a token; set HF_TOKEN",
                    retryable=False,
                ) from None
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc, "reading the repo head") from exc
        return info.sha

    def _have_token(self) -> bool:
        if self.token:
            return True
        from huggingface_hub import get_token

        return bool(get_token())

    def _read_file(self, path: str, revision: str) -> bytes | None:
        """A small file's bytes at ``revision``; None when it does not exist there."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(self.repo_id, path, revision=revision, endpoint=self.endpoint)

        def get() -> bytes | None:
            r = get_session().get(url, headers=build_hf_headers(token=self.token), timeout=self.timeout_s)
            if r.status_code == 404:
                return None
            hf_raise_for_status(r)
            return r.content

        return self._call(get, f"reading {path}")

    def _read_state(self, sha: str) -> RemoteState | None:
        data = self._read_file(remote_state_path(self.run_id), sha)
        if data is None:
            return None
        state, _doc = RemoteState.from_json_bytes(
            data, origin=f"{self.url}@{sha[:12]}:{remote_state_path(self.run_id)}"
        )
        if state.run_id != self.run_id:
            raise RemoteCorruptError(f"{self.url}: state.json of {self.run_id} names run {state.run_id!r}")
        return replace(state, revision=sha)

    def _list_steps(self, sha: str) -> dict[int, str]:
        """step -> folder tree id, at ``sha``."""
        from huggingface_hub.errors import RemoteEntryNotFoundError
        from huggingface_hub.hf_api import RepoFolder

        api = self._api()
        folder = f"{self.run_id}/{CHECKPOINTS_DIR}"

        def listing() -> dict[int, str]:
            out: dict[int, str] = {}
            try:
                for entry in api.list_repo_tree(
                    self.repo_id, path_in_repo=folder, revision=sha, repo_type="model"
                ):
                    if isinstance(entry, RepoFolder):
                        m = COMMITTED_RE.match(entry.path.rsplit("/", 1)[-1])
                        if m:
                            out[int(m.group(1))] = entry.tree_id
            except RemoteEntryNotFoundError:
                return {}
            return out

        return self._call(listing, "listing checkpoints")

    def _remote_manifest(self, sha: str, step: int, tree_id: str | None) -> Manifest | None:
        key = f"{step}:{tree_id}" if tree_id else ""
        if key and key in self._manifest_cache:
            return self._manifest_cache[key]
        data = self._read_file(f"{remote_ckpt_prefix(self.run_id, step)}/{MANIFEST_NAME}", sha)
        if data is None:
            return None
        try:
            manifest = Manifest.from_json_bytes(data, origin=f"{self.url} step {step}")
        except ManifestError:
            return None
        if key:
            self._manifest_cache[key] = manifest
        return manifest

    def _commit(self, operations: list, message: str, parent: str | None) -> str:
        api = self._api()
        info = self._call(
            lambda: api.create_commit(
                self.repo_id,
                operations,
                commit_message=message,
                repo_type="model",
                revision=self.branch,
                parent_commit=parent,
            ),
            "commit",
        )
        return info.oid

    def _ensure_repo(self) -> None:
        """Create the private repo when missing and make checkpoint files LFS (once per process)."""
        if self._repo_ready:
            return
        from huggingface_hub import CommitOperationAdd

        api = self._api()
        self._call(
            lambda: api.create_repo(self.repo_id, private=self.private, exist_ok=True, repo_type="model"),
            "creating the repo",
        )
        for _ in range(self.max_cas_retries):
            head = self._head()
            current = (self._read_file(GITATTRIBUTES, head) if head else None) or b""
            present = {ln.strip() for ln in current.decode("utf-8", "replace").splitlines()}
            missing = [rule for rule in LFS_RULES if rule not in present]
            if not missing:
                break
            text = current.decode("utf-8", "replace")
            if text and not text.endswith("\n"):
                text += "\n"
            text += "".join(rule + "\n" for rule in missing)
            try:
                self._commit(
                    [CommitOperationAdd(GITATTRIBUTES, text.encode())],
                    "relay: store checkpoints with LFS",
                    head,
                )
                break
            except _HeadMoved:
                continue
        self._repo_ready = True

    # -- the contract ----------------------------------------------------------------------------
    def state(self) -> RemoteState | None:
        head = self._head()
        return None if head is None else self._read_state(head)

    def list_steps(self) -> list[int]:
        head = self._head()
        return [] if head is None else sorted(self._list_steps(head), reverse=True)

    def push(self, ckpt: CommittedCheckpoint, *, epoch: int) -> PushResult:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        manifest, mbytes = load_local_manifest(ckpt, run_id=self.run_id)
        msha = sha256_bytes(mbytes)
        step = manifest.step
        prefix = remote_ckpt_prefix(self.run_id, step)
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
            held: set[str] = set()
            for s, tree_id in steps.items():
                m = self._remote_manifest(head, s, tree_id) if head else None
                if m is not None:
                    held.update(f.sha256 for f in m.files)
            to_send = [f for f in manifest.files if f.sha256 not in held]
            self._check_local(ckpt, [f for f in to_send if f.path not in checked])
            checked.update(f.path for f in to_send)

            ops: list = []
            for f in manifest.files:
                local = Path(ckpt.path) / f.path
                try:
                    op = CommitOperationAdd(f"{prefix}/{f.path}", str(local))
                except ValueError:  # huggingface_hub's "is not a file": pruned under us
                    raise RemoteError(
                        f"local checkpoint file {local} is gone (pruned?); not pushing step {step}",
                        retryable=False,
                    ) from None
                op.upload_info.sha256 = bytes.fromhex(f.sha256)  # known: no second hashing pass
                ops.append(op)
            ops.append(CommitOperationAdd(f"{prefix}/{MANIFEST_NAME}", mbytes))
            new_state = RemoteState(self.run_id, step, epoch, msha, updated_at=now_iso())
            ops.append(CommitOperationAdd(remote_state_path(self.run_id), new_state.to_json_bytes()))
            for s in superseded_steps(state, list(steps), push_step=step, push_epoch=epoch):
                ops.append(CommitOperationDelete(remote_ckpt_prefix(self.run_id, s) + "/", is_folder=True))
            try:
                oid = self._commit(ops, f"relay: {self.run_id} step {step} (epoch {epoch})", head)
            except _HeadMoved:
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

    def prune(self, keep_last_n: int) -> list[int]:
        from huggingface_hub import CommitOperationDelete

        for _ in range(self.max_cas_retries):
            head = self._head()
            if head is None:
                return []
            state = self._read_state(head)
            steps = self._list_steps(head)
            doomed = prune_plan(state, list(steps), keep_last_n)
            if not doomed:
                return []
            ops = [
                CommitOperationDelete(remote_ckpt_prefix(self.run_id, s) + "/", is_folder=True)
                for s in doomed
            ]
            try:
                self._commit(ops, f"relay: {self.run_id} prune steps {doomed}", head)
            except _HeadMoved:
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
                        raise _RemoteMissing(2, "not on the remote", f"{prefix}/{f.path}") from None

                try:
                    got = self._call(fetch, f"downloading {prefix}/{f.path}")
                except _HeadMoved:  # pragma: no cover - never from a download
                    raise RemoteError(f"{self.url}: unexpected 412 on download", retryable=True) from None
                target = dest / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(got, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
