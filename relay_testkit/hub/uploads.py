"""Upload routes of the Hub look-alike: preupload, the LFS batch API (upload, verify) and the ndjson commit."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from typing import Any

from aiohttp import web

from relay_testkit.hub.base import HubBase
from relay_testkit.hub.model import LFS_THRESHOLD, Entry, HubError, Repo, lfs_patterns


class UploadRoutes(HubBase):
    async def _h_preupload(self, request: web.Request, repo_id: str, revision: str) -> web.Response:
        body = await request.json()
        with self._lock:
            repo = self._repo(repo_id)
            commit = self._commit_at(repo, revision)
            attrs = commit.tree.get(".gitattributes")
            patterns = lfs_patterns(self._read_object(attrs.sha256)) if attrs else []
            out = []
            for f in body.get("files", []):
                path, size = f["path"], int(f["size"])
                sample = base64.b64decode(f.get("sample", ""))
                lfs = size > 0 and (
                    size >= LFS_THRESHOLD or b"\x00" in sample or any(p.match(path) for p in patterns)
                )
                existing = commit.tree.get(path)
                oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
                out.append(
                    {
                        "path": path,
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": oid,
                    }
                )
        return web.json_response({"files": out, "commitOid": commit.sha})

    async def _h_lfs_batch(self, request: web.Request, repo_id: str) -> web.Response:
        body = await request.json()
        if body.get("operation") != "upload":
            raise HubError(400, "only upload batches are supported")
        objects = []
        with self._lock:
            repo = self._repo(repo_id)
            for obj in body.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo.lfs_oids:
                    href = f"{self.url}/__lfs/{repo_id}/{oid}"
                    item["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
                objects.append(item)
        return web.json_response(
            {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json"
        )

    async def _h_lfs_upload(self, request: web.Request, repo_id: str, oid: str) -> web.Response:
        tmp = self.tmp / uuid.uuid4().hex
        h = hashlib.sha256()
        n = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
                    with self._lock:
                        self.stats.lfs_bytes_received += len(chunk)
            if h.hexdigest() != oid:
                raise HubError(400, f"sha256 mismatch: body hashes to {h.hexdigest()}, expected {oid}")
            with self._lock:
                repo = self._repo(repo_id)
                os.replace(tmp, self.objects / oid)
                repo.lfs_oids.add(oid)
                self.stats.uploaded_oids.append((oid, n))
        finally:
            tmp.unlink(missing_ok=True)
        return web.Response(status=200)

    async def _h_lfs_verify(self, request: web.Request, repo_id: str, oid: str) -> web.Response:
        body = await request.json()
        with self._lock:
            repo = self._repo(repo_id)
            path = self.objects / oid
            if oid not in repo.lfs_oids or not path.exists():
                raise HubError(404, f"LFS object {oid} not found")
            if path.stat().st_size != int(body.get("size", -1)):
                raise HubError(422, f"LFS object {oid} has a different size")
        return web.json_response({"ok": True})

    async def _h_commit(self, request: web.Request, repo_id: str, revision: str) -> web.Response:
        raw = await request.read()
        try:
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except ValueError as exc:
            raise HubError(400, f"invalid ndjson: {exc}") from None
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "first ndjson line must be the header")
        header = lines[0]["value"]
        with self._lock:
            repo = self._repo(repo_id)
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.branches[revision]
            parent = header.get("parentCommit")
            if parent is not None and not head.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.commits[head].tree)
            for line in lines[1:]:
                self._apply(repo, tree, line.get("key"), line.get("value", {}))
            sha = self._new_commit(
                repo, revision, tree, header.get("summary", ""), header.get("description", "")
            )
            self.stats.commits += 1
        return web.json_response(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.url}/{repo_id}/commit/{sha}",
                "pullRequestUrl": None,
            }
        )

    def _apply(self, repo: Repo, tree: dict[str, Entry], key: Any, value: dict[str, Any]) -> None:
        """One operation of a commit (file, lfsFile, deletedFile, deletedFolder) on ``tree``; lock held."""
        path = value.get("path", "")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in path.rstrip("/").split("/")):
            raise HubError(400, f"invalid path {path!r}")
        if key == "file":
            data = base64.b64decode(value["content"])
            self.stats.inline_bytes_received += len(data)
            self.stats.inline_files.append((path, len(data)))
            tree[path] = self._entry(self._store_bytes(data), len(data), False, data)
        elif key == "lfsFile":
            oid = value["oid"]
            if oid not in repo.lfs_oids:
                raise HubError(400, f"LFS object {oid} for {path} was never uploaded")
            size = (self.objects / oid).stat().st_size
            tree[path] = self._entry(oid, size, True)
        elif key == "deletedFile":
            if path not in tree:
                raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            del tree[path]
        elif key == "deletedFolder":
            prefix = path.rstrip("/") + "/"
            doomed = [p for p in tree if p.startswith(prefix)]
            if not doomed:
                raise HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
            for p in doomed:
                del tree[p]
        else:
            raise HubError(400, f"unknown commit operation {key!r}")
