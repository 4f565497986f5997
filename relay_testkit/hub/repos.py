"""Repo routes of the Hub look-alike: whoami, create, info, tree, paths-info, refs, commits."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from aiohttp import web

from relay_testkit.hub.base import HubBase
from relay_testkit.hub.model import DEFAULT_GITATTRIBUTES, Commit, Entry, HubError, Repo, lfs_pointer


class RepoRoutes(HubBase):
    async def _h_whoami(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "user", "name": self.user, "auth": {"type": "access_token"}, "orgs": []}
        )

    async def _h_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, org = body.get("name"), body.get("organization")
        if body.get("type") not in (None, "model"):
            raise HubError(400, "this test hub only serves model repos")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{org or self.user}/{name}"
        private = body.get("private")
        if private is None:
            private = body.get("visibility") == "private"
        with self._lock:
            if repo_id in self.repos:
                raise HubError(
                    409, "You already created this model repo", extra={"url": f"{self.url}/{repo_id}"}
                )
            repo = Repo(repo_id, bool(private))
            self.repos[repo_id] = repo
            data = DEFAULT_GITATTRIBUTES.encode()
            sha = self._store_bytes(data)
            self._new_commit(
                repo,
                "main",
                {".gitattributes": self._entry(sha, len(data), False, data)},
                "initial commit",
                "",
            )
        return web.json_response({"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    async def _h_info(self, request: web.Request, repo_id: str, revision: str) -> web.Response:
        with self._lock:
            repo = self._repo(repo_id)
            commit = self._commit_at(repo, revision)
            siblings = [{"rfilename": p} for p in sorted(commit.tree)]
            doc = {
                "_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                "sha": commit.sha, "lastModified": commit.date, "createdAt": commit.date,
                "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "siblings": siblings,
            }  # fmt: skip
        return web.json_response(doc)

    def _file_json(self, path: str, e: Entry) -> dict:
        doc: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
        if e.lfs:
            doc["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
        return doc

    @staticmethod
    def _folder_json(path: str, tree: dict[str, Entry]) -> dict:
        prefix = path + "/"
        h = hashlib.sha1()
        for p in sorted(p for p in tree if p.startswith(prefix)):
            h.update(f"{p}\0{tree[p].oid}\n".encode())
        return {"type": "directory", "oid": h.hexdigest(), "path": path}

    def _listing(self, tree: dict[str, Entry], base: str, recursive: bool) -> list[dict]:
        prefix = base + "/" if base else ""
        files, folders = [], set()
        for p in sorted(tree):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            parts = rest.split("/")
            if len(parts) == 1:
                files.append(self._file_json(p, tree[p]))
            else:
                depth = len(parts) - 1 if recursive else 1
                for i in range(1, depth + 1):
                    folders.add(prefix + "/".join(parts[:i]))
                if recursive:
                    files.append(self._file_json(p, tree[p]))
        return [self._folder_json(f, tree) for f in sorted(folders)] + files

    async def _h_tree(self, request: web.Request, repo_id: str, revision: str, path: str) -> web.Response:
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        cursor = int(request.query.get("cursor", "0") or 0)
        with self._lock:
            commit = self._commit_at(self._repo(repo_id), revision)
            if path and not any(p.startswith(path + "/") for p in commit.tree):
                raise HubError(
                    404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha}
                )
            items = self._listing(commit.tree, path, recursive)
        page = items[cursor : cursor + self.page_size]
        headers = {}
        if cursor + self.page_size < len(items):
            q = f"recursive={str(recursive).lower()}&cursor={cursor + self.page_size}"
            headers["Link"] = f'<{self.url}{request.path}?{q}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _h_paths_info(self, request: web.Request, repo_id: str, revision: str) -> web.Response:
        form = await request.post()
        paths = form.getall("paths", [])
        with self._lock:
            commit = self._commit_at(self._repo(repo_id), revision)
            out = []
            for p in paths:
                p = str(p).strip("/")
                if p in commit.tree:
                    out.append(self._file_json(p, commit.tree[p]))
                elif any(q.startswith(p + "/") for q in commit.tree):
                    out.append(self._folder_json(p, commit.tree))
        return web.json_response(out)

    async def _h_refs(self, request: web.Request, repo_id: str) -> web.Response:
        with self._lock:
            repo = self._repo(repo_id)
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()
            ]
        return web.json_response({"branches": branches, "converts": [], "tags": []})

    async def _h_commits(self, request: web.Request, repo_id: str, revision: str) -> web.Response:
        with self._lock:
            repo = self._repo(repo_id)
            c: Commit | None = self._commit_at(repo, revision)
            out = []
            while c is not None:
                out.append(
                    {
                        "id": c.sha,
                        "title": c.title,
                        "message": c.message,
                        "authors": [{"user": self.user}],
                        "date": c.date,
                    }
                )
                c = repo.commits.get(c.parent) if c.parent else None
        return web.json_response(out)
