"""The Hub remote's plumbing: the client, typed errors, the head, small files, listings and commits.

Everything :class:`relay.remote.hub.HubRemote` needs from huggingface_hub, in one place: each library
failure becomes a one-line :class:`~relay.remote.errors.RemoteError` that says whether trying again may
help, and a 412 from ``create_commit`` (the head moved since ``parent_commit``: someone committed
first) becomes :class:`HeadMoved`, which callers answer by re-reading and re-deciding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from relay.ckpt.errors import ManifestError
from relay.ckpt.layout import COMMITTED_RE, MANIFEST_NAME
from relay.ckpt.manifest import Manifest
from relay.ids import validate_id
from relay.remote.base import (
    CHECKPOINTS_DIR,
    RemoteCorruptError,
    RemoteError,
    RemoteState,
    by_url_rule,
    remote_ckpt_prefix,
    remote_state_path,
)
from relay.urls import check_repo_id

log = logging.getLogger("relay.remote.hub")

GITATTRIBUTES = ".gitattributes"
LFS_RULE = "*/checkpoints/** filter=lfs diff=lfs merge=lfs -text"
FINAL_LFS_RULE = "*/final/** filter=lfs diff=lfs merge=lfs -text"
LFS_RULES = (LFS_RULE, FINAL_LFS_RULE)
_RETRYABLE_STATUS = {408, 425, 429}


class HeadMoved(Exception):
    """412 from create_commit: someone committed after we read the head."""


class RemoteMissing(FileNotFoundError):
    """The file is not at that revision (404 EntryNotFound) -- unlike huggingface_hub's
    LocalEntryNotFoundError, which means the Hub could not be reached."""


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


class HubAccess:
    """One repo on the Hub (or a look-alike), as the remote reads and commits it."""

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
        except (RemoteError, RemoteMissing):
            raise
        except Exception as exc:  # noqa: BLE001 - every library failure becomes a typed RemoteError
            from huggingface_hub.errors import HfHubHTTPError

            if isinstance(exc, HfHubHTTPError) and getattr(exc.response, "status_code", None) == 412:
                raise HeadMoved() from None
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
            except HeadMoved:
                continue
        self._repo_ready = True
