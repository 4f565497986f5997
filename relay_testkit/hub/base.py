"""What every route family of the Hub look-alike shares: its state and the object store under it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path

from relay_testkit.hub.model import Commit, Entry, HubError, Repo, Stats, git_blob_oid, now_iso


class HubBase:
    """The state the routes read and change, guarded by ``_lock`` (requests run on the server's loop,
    tests inspect it from their own thread)."""

    url: str
    user: str
    page_size: int
    objects: Path
    tmp: Path
    repos: dict[str, Repo]
    stats: Stats
    _lock: threading.RLock
    _counter: int

    # -- storage ---------------------------------------------------------------------------------
    def _read_object(self, sha256: str) -> bytes:
        return (self.objects / sha256).read_bytes()

    def _store_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.objects / sha
        if not path.exists():
            tmp = self.tmp / uuid.uuid4().hex
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    @staticmethod
    def _entry(sha256: str, size: int, lfs: bool, data: bytes | None = None) -> Entry:
        return Entry(sha256=sha256, size=size, lfs=lfs, _regular_oid="" if lfs else git_blob_oid(data or b""))

    def _new_commit(self, repo: Repo, branch: str, tree: dict[str, Entry], title: str, message: str) -> str:
        self._counter += 1
        parent = repo.branches.get(branch)
        digest = hashlib.sha1(
            json.dumps(
                [parent, sorted((p, e.oid) for p, e in tree.items()), title, self._counter, time.time()]
            ).encode()
        ).hexdigest()
        repo.commits[digest] = Commit(digest, parent, tree, title, message, now_iso())
        repo.branches[branch] = digest
        return digest

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if revision in repo.commits:
            return repo.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for s, c in repo.commits.items() if s.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo
