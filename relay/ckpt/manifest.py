"""manifest.json: what a committed checkpoint is, byte for byte.

A checkpoint is trusted only through its manifest: every file's relative path, size and sha256,
plus the run, step and lease epoch that produced it. The same bytes travel to the remote, so the
sha256 of manifest.json identifies a checkpoint everywhere (``manifest_sha256``).

Manifests read from a remote are hostile input: paths are validated so none can climb out of the
checkpoint directory, and every field is type-checked before anything is written to disk.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from relay.ckpt.errors import InvalidStagedCheckpoint, ManifestError, ManifestMissing
from relay.ckpt.fsutil import atomic_write_bytes, hash_file, sha256_bytes
from relay.ckpt.layout import MANIFEST_NAME
from relay.ids import id_problem

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # a manifest is a list of files; anything bigger is not ours
_HEX = frozenset("0123456789abcdef")
TEMP_PREFIX = ".relay-"  # our own temp files (atomic writes); never part of a checkpoint


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, POSIX separators
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    format_version: int
    run_id: str
    step: int
    epoch: int
    created_at: str
    files: tuple[FileEntry, ...]
    source: str | None = None  # the staged directory's name (e.g. "checkpoint-500"), for humans

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json_bytes(self) -> bytes:
        doc = {
            "format_version": self.format_version,
            "run_id": self.run_id,
            "step": self.step,
            "epoch": self.epoch,
            "created_at": self.created_at,
            "source": self.source,
            "total_bytes": self.total_bytes,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()

    @classmethod
    def from_json_bytes(cls, data: bytes, *, origin: str = "manifest.json") -> Manifest:
        """Parse and validate; raises ManifestError with a message naming ``origin`` and the problem."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{origin}: too large ({len(data)} bytes)")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(f"{origin}: not valid JSON ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(doc, dict):
            raise ManifestError(f"{origin}: expected a JSON object")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"{origin}: unsupported format_version {version!r} (expected {FORMAT_VERSION})"
            )
        run_id = doc.get("run_id")
        problem = id_problem(run_id)
        if problem:
            raise ManifestError(f"{origin}: run_id {problem}")
        step = _nonneg_int(doc.get("step"), origin, "step")
        epoch = _nonneg_int(doc.get("epoch"), origin, "epoch")
        created_at = doc.get("created_at")
        if not isinstance(created_at, str):
            raise ManifestError(f"{origin}: created_at must be a string")
        source = doc.get("source")
        if source is not None and not isinstance(source, str):
            raise ManifestError(f"{origin}: source must be a string or null")
        raw_files = doc.get("files")
        if not isinstance(raw_files, list):
            raise ManifestError(f"{origin}: files must be a list")
        files: list[FileEntry] = []
        seen: set[str] = set()
        for i, item in enumerate(raw_files):
            if not isinstance(item, dict):
                raise ManifestError(f"{origin}: files[{i}] must be an object")
            path = item.get("path")
            problem = relpath_problem(path)
            if problem:
                raise ManifestError(f"{origin}: files[{i}].path {problem} (got {path!r})")
            assert isinstance(path, str)
            if path in seen:
                raise ManifestError(f"{origin}: files[{i}].path {path!r} listed twice")
            seen.add(path)
            size = _nonneg_int(item.get("size"), origin, f"files[{i}].size")
            sha = item.get("sha256")
            if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
                raise ManifestError(f"{origin}: files[{i}].sha256 must be 64 lowercase hex characters")
            files.append(FileEntry(path=path, size=size, sha256=sha))
        _check_no_file_dir_clash(seen, origin)
        return cls(
            format_version=version,
            run_id=run_id,
            step=step,
            epoch=epoch,
            created_at=created_at,
            files=tuple(files),
            source=source,
        )


@dataclass(frozen=True)
class CommittedCheckpoint:
    """A checkpoint that sits, complete and described by its manifest, in ``ckpt/step_N``."""

    step: int
    path: Path
    manifest_sha256: str
    total_bytes: int
    epoch: int | None = None
    file_count: int = 0


def _nonneg_int(value: object, origin: str, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(f"{origin}: {name} must be a non-negative integer (got {value!r})")
    return value


def relpath_problem(path: object) -> str | None:
    """Why ``path`` is not a safe relative file path inside a checkpoint, or None."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    if len(path) > 4096:
        return "is too long"
    if "\x00" in path or "\\" in path:
        return "must not contain NUL or backslash"
    if path.startswith("/"):
        return "must be relative"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "must not contain empty, '.' or '..' segments"
    if path == MANIFEST_NAME:
        return f"must not be {MANIFEST_NAME} itself"
    return None


def _check_no_file_dir_clash(paths: set[str], origin: str) -> None:
    for p in paths:
        for parent in PurePosixPath(p).parents:
            s = str(parent)
            if s != "." and s in paths:
                raise ManifestError(f"{origin}: {s!r} is listed both as a file and as a directory")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def list_checkpoint_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under ``root`` except manifest.json and our temp files.

    Symlinks and special files are refused (InvalidStagedCheckpoint): a checkpoint is plain bytes we
    can hash and ship, and a link could point anywhere.
    """
    out: list[str] = []

    def walk(dir_path: str, rel: str) -> None:
        try:
            entries = list(os.scandir(dir_path))
        except OSError as exc:
            raise InvalidStagedCheckpoint(f"cannot list {dir_path}: {exc.strerror or exc}") from None
        for entry in entries:
            name = entry.name
            r = f"{rel}/{name}" if rel else name
            if not rel and (name == MANIFEST_NAME or name.startswith(TEMP_PREFIX)):
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise InvalidStagedCheckpoint(f"{entry.path} is a symlink; checkpoints must hold plain files")
            if stat.S_ISDIR(st.st_mode):
                walk(entry.path, r)
            elif stat.S_ISREG(st.st_mode):
                problem = relpath_problem(r)
                if problem:
                    raise InvalidStagedCheckpoint(f"{entry.path}: file name {problem}")
                out.append(r)
            else:
                raise InvalidStagedCheckpoint(f"{entry.path} is not a regular file")

    walk(str(root), "")
    out.sort()
    return out


def default_workers(n_files: int) -> int:
    return max(1, min(n_files, os.cpu_count() or 1, 8))


def hash_tree(
    root: Path,
    rel_paths: Iterable[str],
    *,
    fsync: bool = False,
    workers: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> list[FileEntry]:
    """Hash (and optionally fsync) files under ``root`` across a small thread pool; order preserved."""
    rels = list(rel_paths)

    def one(rel: str) -> FileEntry:
        size, digest = hash_file(root / rel, fsync=fsync, on_chunk=on_chunk)
        return FileEntry(path=rel, size=size, sha256=digest)

    n = workers if workers is not None else default_workers(len(rels))
    if n <= 1 or len(rels) <= 1:
        return [one(r) for r in rels]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="relay-hash") as pool:
        return list(pool.map(one, rels))


def read_manifest(ckpt_dir: Path) -> tuple[Manifest, bytes]:
    """Read and validate ``ckpt_dir/manifest.json``; returns the manifest and its exact bytes."""
    path = ckpt_dir / MANIFEST_NAME
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestMissing(f"{path}: no manifest (the commit never finished)") from None
    except OSError as exc:
        raise ManifestError(f"{path}: unreadable ({exc.strerror or exc})") from None
    return Manifest.from_json_bytes(data, origin=str(path)), data


def write_manifest(ckpt_dir: Path, manifest: Manifest) -> str:
    """Write manifest.json atomically and durably; returns the sha256 of its bytes."""
    data = manifest.to_json_bytes()
    atomic_write_bytes(ckpt_dir / MANIFEST_NAME, data)
    return sha256_bytes(data)


def committed_from_manifest(path: Path, manifest: Manifest, manifest_bytes: bytes) -> CommittedCheckpoint:
    return CommittedCheckpoint(
        step=manifest.step,
        path=path,
        manifest_sha256=sha256_bytes(manifest_bytes),
        total_bytes=manifest.total_bytes,
        epoch=manifest.epoch,
        file_count=len(manifest.files),
    )
