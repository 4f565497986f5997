"""Download route of the Hub look-alike: resolve (HEAD/GET, ETag, X-Repo-Commit, LFS links, Range)."""

from __future__ import annotations

import re

from aiohttp import web

from relay_testkit.hub.base import HubBase
from relay_testkit.hub.model import HubError


class DownloadRoutes(HubBase):
    async def _h_resolve(
        self, request: web.Request, repo_id: str, revision: str, path: str
    ) -> web.StreamResponse:
        with self._lock:
            repo = self._repo(repo_id)
            commit = self._commit_at(repo, revision)
            entry = commit.tree.get(path)
            if entry is None:
                raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
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
                raise HubError(416, f"bad range {rng!r}")
            if m.group(1):
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            end = min(end, size - 1)
            if start > end and size > 0:
                raise HubError(
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
