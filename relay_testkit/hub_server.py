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

This module holds the server itself: its lifecycle, the test API, the route table, dispatch with
auth and fault injection, and the admin endpoints. The routes live by family in
``relay_testkit/hub/``: ``repos`` (whoami, create, info, tree, paths-info, refs, commits),
``uploads`` (preupload, LFS batch/upload/verify, commit) and ``downloads`` (resolve), over the
shared state and object store of ``hub/base.py`` and the data types of ``hub/model.py``.

Run standalone (for demo/chaos scripts): ``python -m relay_testkit.hub_server --data-dir D
[--port 0] [--token T]``; prints the URL on stdout. Admin endpoints: GET /__admin/stats,
POST /__admin/faults {route, status, times, retry_after, disconnect}, POST /__admin/reset.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from relay_testkit.hub.downloads import DownloadRoutes
from relay_testkit.hub.model import Entry, Fault, HubError, Repo, Stats
from relay_testkit.hub.repos import RepoRoutes
from relay_testkit.hub.uploads import UploadRoutes
from relay_testkit.threaded_app import ThreadedApp


class HubServer(RepoRoutes, UploadRoutes, DownloadRoutes):
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

    # -- HTTP dispatch ---------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        segs = [unquote(s) for s in raw.split("/")[1:]]
        try:
            route, handler, args = self._route(request.method, segs)
        except HubError as exc:
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
                return self._error(HubError(401, "Invalid credentials in Authorization header"))
        try:
            return await handler(request, *args)
        except HubError as exc:
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
    def _error(exc: HubError) -> web.Response:
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
        raise HubError(404, f"no such endpoint: {method} /{'/'.join(segs)}")

    # -- admin ---------------------------------------------------------------------------------------
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
        raise HubError(404, "unknown admin endpoint")


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
