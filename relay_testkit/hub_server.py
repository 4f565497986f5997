"""A Hugging Face Hub look-alike for tests: the endpoints huggingface_hub 2.x calls, on loopback.

Implements what ``HfApi`` and ``hf_hub_download`` use for our remote: create_repo, repo info
(``/api/models/{repo}`` and ``/revision/{rev}``), preupload, the LFS batch API (basic transfer)
with upload + verify, commit (ndjson, ``parentCommit`` answered by 412 when stale; file,
lfsFile, deletedFile, deletedFolder), tree listing (paginated), paths-info, refs, commits and
resolve (HEAD/GET with ETag, X-Repo-Commit, Content-Length, X-Linked-Etag/X-Linked-Size for
LFS, Range). Point the real client at it with ``HF_ENDPOINT=<server.url>`` and
``HF_HUB_DISABLE_XET=1`` (``server.env()`` returns both).

Fixture API::

    with HubServer(tmp_path / "hub") as hub:          # started on a free 127.0.0.1 port, in a thread
        hub.url                                       # "http://127.0.0.1:PORT"
        hub.stats.lfs_bytes_received                  # bytes of LFS PUT bodies (all of them)
        hub.stats.inline_bytes_received               # decoded bytes of regular files in commits
        hub.stats.uploaded_oids                       # [(sha256, nbytes), ...] per LFS PUT
        hub.stats.requests["commit"]                  # request counts per route name
        hub.reset_stats()
        hub.add_fault("commit", status=503, times=1)  # or status=429, retry_after=0.1; disconnect=True
        hub.files("owner/repo")                       # {path: bytes} at the head of main
        hub.head("owner/repo")                        # commit sha of main
        hub.put_file("owner/repo", path, data)        # commit a file server-side (tests: corrupt a remote)
        hub.on_request = fn(route: str)               # called (in a worker thread) before each request

Route names: whoami, create, info, preupload, lfs_batch, lfs_upload, lfs_verify, commit, tree,
paths_info, refs, commits, resolve. Faults match a route name or "*".

Run standalone (for demo/chaos scripts): ``python -m relay_testkit.hub_server --data-dir D
[--port 0] [--token T]``; prints the URL on stdout. Admin endpoints: GET /__admin/stats,
POST /__admin/faults {route, status, times, retry_after, disconnect}, POST /__admin/reset.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from relay_testkit.threaded_app import ThreadedApp

LFS_THRESHOLD = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n"
    for p in (
        "*.7z", "*.bin", "*.ckpt", "*.h5", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
        "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.safetensors", "*.tar",
        "*.tflite", "*.zip", "*.zst", "*tfevents*",
    )
)  # fmt: skip


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    sha256: str  # content address in the object store
    size: int
    lfs: bool

    @property
    def oid(self) -> str:
        """The git blob oid (of the pointer for LFS files), as the Hub reports it."""
        return git_blob_oid(lfs_pointer(self.sha256, self.size)) if self.lfs else self._regular_oid

    _regular_oid: str = ""


@dataclass
class Commit:
    sha: str
    parent: str | None
    tree: dict[str, Entry]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)


@dataclass
class Fault:
    route: str
    status: int | None
    times: int
    retry_after: float | None = None
    disconnect: bool = False
    message: str = "injected failure"


@dataclass
class Stats:
    lfs_bytes_received: int = 0
    inline_bytes_received: int = 0
    bytes_served: int = 0
    commits: int = 0
    uploaded_oids: list[tuple[str, int]] = field(default_factory=list)
    inline_files: list[tuple[str, int]] = field(default_factory=list)
    requests: collections.Counter = field(default_factory=collections.Counter)
    faults_fired: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def bytes_received(self) -> int:
        return self.lfs_bytes_received + self.inline_bytes_received

    def as_dict(self) -> dict:
        return {
            "lfs_bytes_received": self.lfs_bytes_received,
            "inline_bytes_received": self.inline_bytes_received,
            "bytes_received": self.bytes_received,
            "bytes_served": self.bytes_served,
            "commits": self.commits,
            "uploaded_oids": self.uploaded_oids,
            "inline_files": self.inline_files,
            "requests": dict(self.requests),
            "faults_fired": self.faults_fired,
        }


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """gitattributes/wildmatch subset: ``*``, ``?``, ``**``; patterns without '/' match the basename."""
    anchored = "/" in pattern.rstrip("/")
    pat = pattern.lstrip("/")
    out, i = [], 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif pat[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pat[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pat[i]))
            i += 1
    body = "".join(out)
    return re.compile(("^" if anchored else "(?:^|.*/)") + body + "$")


def _lfs_patterns(gitattributes: bytes) -> list[re.Pattern[str]]:
    pats = []
    for line in gitattributes.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            pats.append(_glob_to_regex(parts[0]))
    return pats


class _HubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


class HubServer:
    """The server (see module docstring). Thread-safe introspection; requests run on its own loop."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        token: str | None = None,
        user: str = "relay-test",
        page_size: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="hubsrv-"))
        self.objects = self.data_dir / "objects"
        self.tmp = self.data_dir / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        self.page_size = page_size
        self.host = host
        self.port = port
        self.repos: dict[str, Repo] = {}
        self.stats = Stats()
        self.faults: list[Fault] = []
        self.on_request: Any = None
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadedApp | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> HubServer:
        app = web.Application(client_max_size=4 * 1024**3)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._server = ThreadedApp(app, host=self.host, port=self.port, name="hub-server").start()
        self.port = self._server.port
        self.url = f"http://{self.host}:{self.port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should talk to this server with huggingface_hub."""
        env = {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        if self.token:
            env["HF_TOKEN"] = self.token
        return env

    # -- test API --------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        with self._lock:
            self.stats = Stats()

    def add_fault(
        self,
        route: str,
        *,
        status: int | None = 503,
        times: int = 1,
        retry_after: float | None = None,
        disconnect: bool = False,
        message: str = "injected failure",
    ) -> None:
        with self._lock:
            self.faults.append(
                Fault(route, None if disconnect else status, times, retry_after, disconnect, message)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def head(self, repo_id: str, branch: str = "main") -> str | None:
        with self._lock:
            repo = self.repos.get(repo_id)
            return None if repo is None else repo.branches.get(branch)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            commit = self._commit_at(self.repos[repo_id], revision)
            return {p: self._read_object(e.sha256) for p, e in commit.tree.items()}

    def tree(self, repo_id: str, revision: str = "main") -> dict[str, Entry]:
        with self._lock:
            return dict(self._commit_at(self.repos[repo_id], revision).tree)

    def put_file(self, repo_id: str, path: str, data: bytes, *, lfs: bool | None = None) -> str:
        """Commit ``data`` at ``path`` on main, server-side (to corrupt or plant files in tests)."""
        with self._lock:
            repo = self.repos[repo_id]
            sha = self._store_bytes(data)
            is_lfs = (
                lfs
                if lfs is not None
                else (
                    path in self._commit_at(repo, "main").tree
                    and self._commit_at(repo, "main").tree[path].lfs
                )
            )
            if is_lfs:
                repo.lfs_oids.add(sha)
            tree = dict(self._commit_at(repo, "main").tree)
            tree[path] = self._entry(sha, len(data), is_lfs, data)
            return self._new_commit(repo, "main", tree, f"test: put {path}", "")

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
        repo.commits[digest] = Commit(digest, parent, tree, title, message, _now())
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
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    # -- HTTP dispatch ---------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        segs = [unquote(s) for s in raw.split("/")[1:]]
        try:
            route, handler, args = self._route(request.method, segs)
        except _HubError as exc:
            return self._error(exc)
        with self._lock:
            self.stats.requests[route] += 1
        hook = self.on_request
        if hook is not None and not route.startswith("admin"):
            await asyncio.get_running_loop().run_in_executor(None, hook, route)
        if not route.startswith("admin"):
            fault = self._take_fault(route)
            if fault is not None:
                return await self._fire_fault(request, route, fault)
            if self.token and route != "lfs_upload" and not self._authorized(request):
                return self._error(_HubError(401, "Invalid credentials in Authorization header"))
        try:
            return await handler(request, *args)
        except _HubError as exc:
            return self._error(exc)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    def _take_fault(self, route: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.route in (route, "*"):
                    fault.times -= 1
                    self.stats.faults_fired.append((route, fault.status))
                    return fault
        return None

    async def _fire_fault(self, request: web.Request, route: str, fault: Fault) -> web.StreamResponse:
        # Read the body first so the client sees our status, not a broken pipe (bytes still count).
        n = 0
        async for chunk in request.content.iter_chunked(1 << 20):
            n += len(chunk)
        if route == "lfs_upload":
            with self._lock:
                self.stats.lfs_bytes_received += n
        if fault.disconnect:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        headers = {"X-Error-Message": fault.message}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return web.json_response({"error": fault.message}, status=fault.status or 503, headers=headers)

    @staticmethod
    def _error(exc: _HubError) -> web.Response:
        headers = {"X-Error-Message": exc.message, **exc.headers}
        if exc.code:
            headers["X-Error-Code"] = exc.code
        return web.json_response({"error": exc.message, **exc.extra}, status=exc.status, headers=headers)

    def _route(self, method: str, segs: list[str]) -> tuple[str, Any, tuple]:
        n = len(segs)
        if n >= 2 and segs[0] == "__admin":
            return "admin", self._h_admin, (segs[1],)
        if n >= 4 and segs[0] == "__lfs":
            repo_id = f"{segs[1]}/{segs[2]}"
            if n == 5 and segs[4] == "verify" and method == "POST":
                return "lfs_verify", self._h_lfs_verify, (repo_id, segs[3])
            if n == 4 and method == "PUT":
                return "lfs_upload", self._h_lfs_upload, (repo_id, segs[3])
        if n >= 2 and segs[0] == "api":
            if segs[1] == "whoami-v2":
                return "whoami", self._h_whoami, ()
            if segs[1:3] == ["repos", "create"] and method == "POST":
                return "create", self._h_create, ()
            if segs[1] == "models" and n >= 4:
                repo_id = f"{segs[2]}/{segs[3]}"
                rest = segs[4:]
                if not rest and method == "GET":
                    return "info", self._h_info, (repo_id, "main")
                if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                    return "info", self._h_info, (repo_id, rest[1])
                if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
                    return "preupload", self._h_preupload, (repo_id, rest[1])
                if len(rest) == 2 and rest[0] == "commit" and method == "POST":
                    return "commit", self._h_commit, (repo_id, rest[1])
                if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                    return "tree", self._h_tree, (repo_id, rest[1], "/".join(rest[2:]).strip("/"))
                if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                    return "paths_info", self._h_paths_info, (repo_id, rest[1])
                if len(rest) == 1 and rest[0] == "refs" and method == "GET":
                    return "refs", self._h_refs, (repo_id,)
                if len(rest) == 2 and rest[0] == "commits" and method == "GET":
                    return "commits", self._h_commits, (repo_id, rest[1])
        if n == 6 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
            return "lfs_batch", self._h_lfs_batch, (f"{segs[0]}/{segs[1][:-4]}",)
        if n >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return "resolve", self._h_resolve, (f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
        raise _HubError(404, f"no such endpoint: {method} /{'/'.join(segs)}")

    # -- handlers ----------------------------------------------------------------------------------
    async def _h_admin(self, request: web.Request, what: str) -> web.Response:
        if what == "stats":
            with self._lock:
                return web.json_response(self.stats.as_dict())
        if what == "reset" and request.method == "POST":
            self.reset_stats()
            self.clear_faults()
            return web.json_response({"ok": True})
        if what == "faults" and request.method == "POST":
            body = await request.json()
            self.add_fault(
                body["route"],
                status=body.get("status", 503),
                times=int(body.get("times", 1)),
                retry_after=body.get("retry_after"),
                disconnect=bool(body.get("disconnect", False)),
            )
            return web.json_response({"ok": True})
        raise _HubError(404, "unknown admin endpoint")

    async def _h_whoami(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "user", "name": self.user, "auth": {"type": "access_token"}, "orgs": []}
        )

    async def _h_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, org = body.get("name"), body.get("organization")
        if body.get("type") not in (None, "model"):
            raise _HubError(400, "this test hub only serves model repos")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise _HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{org or self.user}/{name}"
        private = body.get("private")
        if private is None:
            private = body.get("visibility") == "private"
        with self._lock:
            if repo_id in self.repos:
                raise _HubError(
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

    async def _h_preupload(self, request: web.Request, repo_id: str, revision: str) -> web.Response:
        body = await request.json()
        with self._lock:
            repo = self._repo(repo_id)
            commit = self._commit_at(repo, revision)
            attrs = commit.tree.get(".gitattributes")
            patterns = _lfs_patterns(self._read_object(attrs.sha256)) if attrs else []
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
            raise _HubError(400, "only upload batches are supported")
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
                raise _HubError(400, f"sha256 mismatch: body hashes to {h.hexdigest()}, expected {oid}")
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
                raise _HubError(404, f"LFS object {oid} not found")
            if path.stat().st_size != int(body.get("size", -1)):
                raise _HubError(422, f"LFS object {oid} has a different size")
        return web.json_response({"ok": True})

    async def _h_commit(self, request: web.Request, repo_id: str, revision: str) -> web.Response:
        raw = await request.read()
        try:
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except ValueError as exc:
            raise _HubError(400, f"invalid ndjson: {exc}") from None
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "first ndjson line must be the header")
        header = lines[0]["value"]
        with self._lock:
            repo = self._repo(repo_id)
            if revision not in repo.branches:
                raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.branches[revision]
            parent = header.get("parentCommit")
            if parent is not None and not head.startswith(parent):
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.commits[head].tree)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if (
                    not path
                    or path.startswith("/")
                    or any(p in ("", ".", "..") for p in path.rstrip("/").split("/"))
                ):
                    raise _HubError(400, f"invalid path {path!r}")
                if key == "file":
                    data = base64.b64decode(value["content"])
                    self.stats.inline_bytes_received += len(data)
                    self.stats.inline_files.append((path, len(data)))
                    tree[path] = self._entry(self._store_bytes(data), len(data), False, data)
                elif key == "lfsFile":
                    oid = value["oid"]
                    if oid not in repo.lfs_oids:
                        raise _HubError(400, f"LFS object {oid} for {path} was never uploaded")
                    size = (self.objects / oid).stat().st_size
                    tree[path] = self._entry(oid, size, True)
                elif key == "deletedFile":
                    if path not in tree:
                        raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del tree[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in tree if p.startswith(prefix)]
                    if not doomed:
                        raise _HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
                else:
                    raise _HubError(400, f"unknown commit operation {key!r}")
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
                raise _HubError(
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

    async def _h_resolve(
        self, request: web.Request, repo_id: str, revision: str, path: str
    ) -> web.StreamResponse:
        with self._lock:
            repo = self._repo(repo_id)
            commit = self._commit_at(repo, revision)
            entry = commit.tree.get(path)
            if entry is None:
                raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        size = entry.size
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(size)
        start, end, status = 0, size - 1, 200
        rng = request.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise _HubError(416, f"bad range {rng!r}")
            if m.group(1):
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            end = min(end, size - 1)
            if start > end and size > 0:
                raise _HubError(
                    416, f"range {rng!r} not satisfiable", headers={"Content-Range": f"bytes */{size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        resp = web.StreamResponse(status=status, headers=headers)
        if request.method == "HEAD":
            await resp.prepare(request)
            return resp
        await resp.prepare(request)
        with open(self.objects / entry.sha256, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                await resp.write(chunk)
                remaining -= len(chunk)
                with self._lock:
                    self.stats.bytes_served += len(chunk)
        await resp.write_eof()
        return resp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Hub-compatible test server")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    server = HubServer(args.data_dir, token=args.token, host=args.host, port=args.port).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
