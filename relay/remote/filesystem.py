"""The filesystem remote (``file:///path``): the demo's default, and pods sharing a network volume.

Same contract as the Hub, on a directory:

* ``<root>/<run_id>/checkpoints/step_%08d/`` -- immutable once published;
* ``<root>/<run_id>/relay/state.json``       -- replaced atomically, last, under the remote lock;
* ``<root>/<run_id>/relay/tmp/``             -- pushes stage here (same filesystem), then rename.

A push copies only files the remote does not already hold: a file whose sha256 appears in a
manifest already on the remote is hard-linked from there (0 bytes sent). Files are copied to a
``.relay-*.part`` name, hashed while copied, checked against the manifest, fsynced and renamed, so
an interrupted push leaves complete files that the next push of the same checkpoint reuses (the
staging directory is named by step and manifest hash). The publish -- fencing check, rename,
state.json -- happens under a ``filelock`` so two workers never interleave. The revision is a
counter in state.json, bumped by every push and prune.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from relay.ckpt.errors import ManifestError
from relay.ckpt.fsutil import (
    atomic_write_bytes,
    copy_file_hashed,
    empty_dir,
    fsync_dir,
    fsync_tree_dirs,
    move_to_trash,
    sha256_bytes,
)
from relay.ckpt.layout import CKPT_DIR_FMT, COMMITTED_RE, MANIFEST_NAME
from relay.ckpt.manifest import TEMP_PREFIX, CommittedCheckpoint, FileEntry, Manifest, now_iso
from relay.ids import validate_id
from relay.remote.base import (
    CHECKPOINTS_DIR,
    RELAY_DIR,
    STATE_NAME,
    PushResult,
    Remote,
    RemoteCorruptError,
    RemoteError,
    RemoteState,
    Snapshot,
    decide_push,
    load_local_manifest,
    prune_plan,
    remote_ckpt_prefix,
    superseded_steps,
)
from relay.remote.export import FINAL_DIR, check_final_fence, remote_final_prefix

log = logging.getLogger(__name__)

# Test seam, like relay.ckpt.commit.PHASE_HOOK: phases "copy_chunk", "before_publish", "before_state".
PHASE_HOOK: Callable[[str], None] | None = None


def _phase(name: str) -> None:
    hook = PHASE_HOOK
    if hook is not None:
        hook(name)


#: errno values that retrying cannot fix: permissions, a read-only filesystem, a file where a directory
#: must be.  ENOENT is only fatal when the root's parent is missing (an unmounted network volume); a file
#: that vanished mid-operation (a concurrent prune) is worth another try.
FATAL_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the filesystem is read-only",
    errno.ENOTDIR: "a path component is not a directory",
}


def unusable_root_problem(exc: OSError, root: Path) -> str | None:
    """Why ``exc`` means the remote root ``root`` cannot be used at all, or None when a retry may help."""
    hint = f"the remote root {root} is unusable: check that it is a writable directory on a mounted volume"
    if exc.errno in FATAL_ERRNOS:
        return f"{FATAL_ERRNOS[exc.errno]}: {hint}"
    if exc.errno == errno.ENOENT:
        try:
            parent_ok = root.parent.is_dir()
        except OSError:
            parent_ok = False
        if not parent_ok:
            return f"{root.parent} does not exist: {hint}"
    return None


class FilesystemRemote(Remote):
    def __init__(self, root: Path | str, run_id: str, *, lock_timeout_s: float = 600.0) -> None:
        super().__init__()
        self.run_id = validate_id(run_id, "run_id")
        self.root = Path(root)
        if not self.root.is_absolute():
            raise RemoteError(f"filesystem remote root must be absolute (got {root!s})")
        self.url = self.root.as_uri()
        self.run_root = self.root / self.run_id
        self.ckpts = self.run_root / CHECKPOINTS_DIR
        self.relay_dir = self.run_root / RELAY_DIR
        self.state_file = self.relay_dir / STATE_NAME
        self.lock_file = self.relay_dir / ".lock"
        self.tmp_root = self.relay_dir / "tmp"
        self.trash = self.relay_dir / "trash"
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"FilesystemRemote({self.url!r}, run_id={self.run_id!r})"

    # -- helpers ---------------------------------------------------------------------------------
    @contextmanager
    def _lock(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.relay_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_file), timeout=self.lock_timeout_s)
        try:
            lock.acquire()
        except Timeout:
            raise RemoteError(
                f"{self.url}: remote lock {self.lock_file} busy for {self.lock_timeout_s:.0f}s",
                retryable=True,
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _read_state(self) -> tuple[RemoteState | None, int]:
        try:
            data = self.state_file.read_bytes()
        except FileNotFoundError:
            return None, 0
        state, doc = RemoteState.from_json_bytes(data, origin=str(self.state_file))
        counter = doc.get("revision")
        counter = int(counter) if isinstance(counter, (int, str)) and str(counter).isdigit() else 0
        if state.run_id != self.run_id:
            raise RemoteCorruptError(
                f"{self.state_file}: names run {state.run_id!r}, expected {self.run_id!r}"
            )
        return replace(state, revision=str(counter)), counter

    def _write_state(self, state: RemoteState, counter: int) -> None:
        _phase("before_state")
        atomic_write_bytes(self.state_file, state.to_json_bytes(revision=counter))

    def _step_dirs(self) -> dict[int, Path]:
        out: dict[int, Path] = {}
        try:
            for entry in os.scandir(self.ckpts):
                m = COMMITTED_RE.match(entry.name)
                if m and entry.is_dir(follow_symlinks=False):
                    out[int(m.group(1))] = Path(entry.path)
        except FileNotFoundError:
            pass
        return out

    def _held_files(self) -> dict[str, Path]:
        """sha256 -> a file already on the remote with that content (from the remote manifests)."""
        held: dict[str, Path] = {}
        for _step, d in sorted(self._step_dirs().items(), reverse=True):
            try:
                manifest = Manifest.from_json_bytes((d / MANIFEST_NAME).read_bytes(), origin=str(d))
            except (OSError, ManifestError):  # an unreadable remote manifest just holds nothing
                continue
            for f in manifest.files:
                if f.sha256 not in held:
                    p = d / f.path
                    try:
                        if p.stat().st_size == f.size:
                            held[f.sha256] = p
                    except OSError:
                        continue
        return held

    def _wrap(self, exc: OSError, what: str) -> RemoteError:
        """An OSError as a RemoteError: retryable unless it says the remote root can never work."""
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"{self.url}: {what} failed: {exc.strerror or exc}{where}"
        fatal = unusable_root_problem(exc, self.root)
        if fatal is not None:
            return RemoteError(f"{message}; {fatal} (not retrying)", retryable=False)
        return RemoteError(message, retryable=True)

    # -- the contract ----------------------------------------------------------------------------
    def state(self) -> RemoteState | None:
        try:
            return self._read_state()[0]
        except OSError as exc:
            raise self._wrap(exc, "reading state.json") from None

    def list_steps(self) -> list[int]:
        try:
            return sorted(self._step_dirs(), reverse=True)
        except OSError as exc:
            raise self._wrap(exc, "listing checkpoints") from None

    def push(self, ckpt: CommittedCheckpoint, *, epoch: int) -> PushResult:
        manifest, mbytes = load_local_manifest(ckpt, run_id=self.run_id)
        msha = sha256_bytes(mbytes)
        step = manifest.step
        where = f"{self.url}/{self.run_id}"
        try:
            state, counter = self._read_state()
            noop = decide_push(state, step=step, epoch=epoch, manifest_sha256=msha, where=where)
            if noop:
                return PushResult(step, str(counter), 0, 0, len(manifest.files), noop=True, detail=noop)
            stage, sent, files_sent, files_skipped = self._stage(ckpt, manifest, mbytes, msha)
            with self._lock():
                _phase("before_publish")
                state, counter = self._read_state()
                noop = decide_push(state, step=step, epoch=epoch, manifest_sha256=msha, where=where)
                if noop:
                    shutil.rmtree(stage, ignore_errors=True)
                    return PushResult(step, str(counter), 0, 0, len(manifest.files), noop=True, detail=noop)
                self.ckpts.mkdir(parents=True, exist_ok=True)
                dest = self.ckpts / (CKPT_DIR_FMT % step)
                if os.path.lexists(dest):
                    move_to_trash(dest, self.trash)
                os.rename(stage, dest)
                steps = list(self._step_dirs())
                for s in superseded_steps(state, steps, push_step=step, push_epoch=epoch):
                    move_to_trash(self._step_dirs()[s], self.trash)
                fsync_dir(self.ckpts)
                counter += 1
                self._write_state(
                    RemoteState(self.run_id, step, epoch, msha, updated_at=now_iso()),
                    counter,
                )
            Path(str(stage) + ".lock").unlink(missing_ok=True)
            empty_dir(self.trash)
            self._clean_stale_stages(step)
            return PushResult(step, str(counter), sent, files_sent, files_skipped)
        except OSError as exc:
            raise self._wrap(exc, f"push of step {step}") from None

    def _stage(
        self, ckpt: CommittedCheckpoint, manifest: Manifest, mbytes: bytes, msha: str, name: str | None = None
    ) -> tuple[Path, int, int, int]:
        """Build the checkpoint (or final export: ``name``) in tmp/, resuming an interrupted stage of the
        same manifest; files the remote already holds are hard-linked."""
        from filelock import FileLock

        self.tmp_root.mkdir(parents=True, exist_ok=True)
        stage = self.tmp_root / f"{name or CKPT_DIR_FMT % manifest.step}-{msha[:16]}"
        held = self._held_files()
        sent = files_sent = files_skipped = 0
        with FileLock(str(stage) + ".lock", timeout=self.lock_timeout_s):
            stage.mkdir(exist_ok=True)
            for f in manifest.files:
                dst = stage / f.path
                try:
                    if dst.stat().st_size == f.size:  # finished (verified) by an interrupted push
                        files_skipped += 1
                        continue
                except FileNotFoundError:
                    pass
                dst.parent.mkdir(parents=True, exist_ok=True)
                src_remote = held.get(f.sha256)
                if src_remote is not None:
                    try:
                        os.link(src_remote, dst)
                        files_skipped += 1
                        continue
                    except OSError:
                        pass  # no hardlinks here, or it was just pruned: copy from the local checkpoint
                part = dst.with_name(f"{TEMP_PREFIX}{dst.name}.part")
                local = Path(ckpt.path) / f.path
                try:
                    size, digest = copy_file_hashed(local, part, on_chunk=lambda _n: _phase("copy_chunk"))
                except FileNotFoundError as exc:
                    if exc.filename != str(local):
                        raise
                    raise RemoteError(
                        f"local checkpoint file {local} is gone (pruned?); not pushing step {manifest.step}",
                        retryable=False,
                    ) from None
                if size != f.size or digest != f.sha256:
                    part.unlink(missing_ok=True)
                    raise RemoteError(
                        f"local file {Path(ckpt.path) / f.path} no longer matches its manifest "
                        f"(size {size} vs {f.size}); the local checkpoint is corrupt, not pushing it",
                        retryable=False,
                    )
                os.rename(part, dst)
                sent += size
                files_sent += 1
            for dirpath, _dirs, names in os.walk(stage):  # parts left by an interrupted copy
                for name in names:
                    if name.startswith(TEMP_PREFIX):
                        os.unlink(os.path.join(dirpath, name))
            atomic_write_bytes(stage / MANIFEST_NAME, mbytes)
            fsync_tree_dirs(stage)
        return stage, sent, files_sent, files_skipped

    def _clean_stale_stages(self, published_step: int) -> None:
        """Drop staging dirs of steps at or below what was just published, unless someone works on them."""
        from filelock import FileLock, Timeout

        try:
            entries = list(os.scandir(self.tmp_root))
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name
            if not name.startswith("step_"):
                continue
            stage = entry.path[: -len(".lock")] if name.endswith(".lock") else entry.path
            try:
                step = int(Path(stage).name[5:].split("-", 1)[0])
            except ValueError:
                continue
            if step > published_step or (name.endswith(".lock") and os.path.exists(stage)):
                continue
            try:
                with FileLock(stage + ".lock", timeout=0):
                    shutil.rmtree(stage, ignore_errors=True)
                os.unlink(stage + ".lock")
            except (Timeout, OSError):
                continue

    def prune(self, keep_last_n: int) -> list[int]:
        try:
            with self._lock():
                state, counter = self._read_state()
                dirs = self._step_dirs()
                doomed = prune_plan(state, list(dirs), keep_last_n)
                if not doomed:
                    return []
                for s in doomed:
                    move_to_trash(dirs[s], self.trash)
                fsync_dir(self.ckpts)
                if state is not None:
                    self._write_state(state, counter + 1)
            empty_dir(self.trash)
            log.info("%s: pruned remote steps %s", self.url, doomed)
            return doomed
        except OSError as exc:
            raise self._wrap(exc, "prune") from None

    # -- the final export --------------------------------------------------------------------------
    def push_final(self, export: CommittedCheckpoint, *, epoch: int) -> PushResult:
        manifest, mbytes = load_local_manifest(export, run_id=self.run_id)
        prefix = remote_final_prefix(self.run_id)
        where, final_dir = f"{self.url}/{prefix}", self.root / prefix
        try:
            check_final_fence(self._read_state()[0], epoch=epoch, where=where)
            if self._read_bytes(None, f"{prefix}/{MANIFEST_NAME}") == mbytes:
                return PushResult(
                    manifest.step, None, 0, 0, len(manifest.files), noop=True, detail="same export"
                )
            stage, sent, files_sent, files_skipped = self._stage(
                export, manifest, mbytes, sha256_bytes(mbytes), name=FINAL_DIR
            )
            with self._lock():
                state, counter = self._read_state()
                check_final_fence(state, epoch=epoch, where=where)
                if os.path.lexists(final_dir):
                    move_to_trash(final_dir, self.trash)
                os.rename(stage, final_dir)
                fsync_dir(self.run_root)
            Path(str(stage) + ".lock").unlink(missing_ok=True)
            empty_dir(self.trash)
            return PushResult(manifest.step, str(counter), sent, files_sent, files_skipped)
        except OSError as exc:
            raise self._wrap(exc, "push of the final export") from None

    # -- pull primitives -------------------------------------------------------------------------
    def _snapshot(self, revision: str | None) -> Snapshot:
        try:
            if not self.run_root.is_dir():
                return Snapshot("0", None, [])
            with self._lock():  # state and listing read together
                state, counter = self._read_state()
                steps = self.list_steps()
        except OSError as exc:
            raise self._wrap(exc, "reading state.json") from None
        if revision is not None and revision != str(counter):
            raise RemoteError(
                f"{self.url}: revision {revision} is gone (the filesystem remote keeps only the current "
                f"revision, now {counter})",
                retryable=False,
            )
        return Snapshot(str(counter), state, steps)

    def _read_manifest_bytes(self, snap: Snapshot, step: int) -> bytes | None:
        return self._read_bytes(snap, f"{remote_ckpt_prefix(self.run_id, step)}/{MANIFEST_NAME}")

    def _download(
        self,
        snap: Snapshot,
        step: int,
        files: tuple[FileEntry, ...],
        dest: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        src_dir = self.ckpts / (CKPT_DIR_FMT % step)
        for f in files:
            target = dest / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                copy_file_hashed(src_dir / f.path, target, on_chunk=on_bytes)
            except FileNotFoundError:
                # Gone because the remote moved on (pruned after a newer push)? Then retry the pull
                # from the new head rather than falling back to an older checkpoint.
                current = self._read_state()[1]
                if str(current) != snap.revision:
                    raise RemoteError(
                        f"{self.url}: step {step} was pruned while being pulled (revision {snap.revision} -> "
                        f"{current}); pull again",
                        retryable=True,
                    ) from None
                raise
            except OSError as exc:
                raise self._wrap(exc, f"copying {f.path} of step {step}") from None

    def _read_bytes(self, snap: Snapshot | None, path: str) -> bytes | None:
        try:
            return (self.root / path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._wrap(exc, f"reading {path}") from None

    def _download_files(
        self,
        snap: Snapshot,
        prefix: str,
        files: tuple[FileEntry, ...],
        dest: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        for f in files:
            target = dest / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                copy_file_hashed(self.root / prefix / f.path, target, on_chunk=on_bytes)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):  # the caller names the missing file
                    raise
                raise self._wrap(exc, f"copying {prefix}/{f.path}") from None
