"""The Hub look-alike's data: repos, commits, tree entries, LFS rules, faults, statistics, errors."""

from __future__ import annotations

import collections
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

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


def now_iso() -> str:
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


def lfs_patterns(gitattributes: bytes) -> list[re.Pattern[str]]:
    pats = []
    for line in gitattributes.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            pats.append(_glob_to_regex(parts[0]))
    return pats


class HubError(Exception):
    """An answer the Hub would give instead of the success: status, message, X-Error-Code, headers."""

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
