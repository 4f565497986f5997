"""The filesystem remote (``file:///path``): the demo's default, and pods sharing a network volume.

Same contract as the Hub, on a directory:

* ``<root>/<run_id>/checkpoints/step_%08d/`` -- immutable once published;
* ``<root>/<run_id>/relay/state.json``       -- replaced atomically, last, under the publish lock;
* ``<root>/<run_id>/relay/tmp/``             -- pushes stage here (same filesystem), then rename;
* ``<root>/<run_id>/relay/trash/``           -- what a publish replaces goes here, then is deleted.

A push copies only files the remote does not already hold: a file whose sha256 appears in a
manifest already on the remote is hard-linked from there (0 bytes sent). Files are copied to a
``.relay-*.part`` name, hashed while copied, checked against the manifest, fsynced and renamed, so
an interrupted push leaves complete files that the next push of the same checkpoint reuses (the
staging directory is named by step and manifest hash). The publish -- the fencing check, the
rename, state.json -- and every claim and prune happen under the publish lock
(:class:`~relay.remote.fs_tree.PublishLock`, a bounded wait), so a check and its write are one
compare-and-swap: a push that was uploading when a newer lease claimed the remote is refused when it
takes the lock. The revision is a counter in state.json, bumped by every claim, push and prune.

Nothing below the root is reached through a symbolic link (:mod:`relay.remote.fs_tree`): a hostile
layout (``relay/tmp`` linked to a directory elsewhere) is refused, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from relay.ckpt.fsutil import copy_fd_hashed, sha256_bytes
from relay.ckpt.layout import CKPT_DIR_FMT, MANIFEST_NAME
from relay.ckpt.manifest import CommittedCheckpoint, FileEntry
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
    check_prune_epoch,
    decide_claim,
    decide_push,
    leftover_steps,
    load_local_manifest,
    prune_plan,
    published_state,
    remote_ckpt_prefix,
    superseded_steps,
)
from relay.remote.export import FINAL_DIR, check_final_fence, remote_final_prefix
from relay.remote.fs_stage import clean_stale_stages, stage_checkpoint, step_dirs
from relay.remote.fs_tree import PublishLock, SafeDir, holder_name

log = logging.getLogger(__name__)

TMP_DIR, TRASH_DIR, LOCK_NAME = "tmp", "trash", ".lock"
#: how long a claim, a publish or a prune waits for the publish lock (which is held for milliseconds)
LOCK_TIMEOUT_S = 30.0

# Test seam, like relay.ckpt.commit.PHASE_HOOK: phases "copy_chunk", "staged" (before the publish lock),
# "before_publish" (under it), "before_state".
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
    errno.ENOSPC: "no space left on the device",
}


def unusable_root_problem(exc: OSError, root: Path) -> str | None:
    """Why ``exc`` means the remote root ``root`` cannot be used at all, or None when a retry may help."""
    hint = (
        f"the remote root {root} is unusable: check that it is a writable directory with free space on a "
        "mounted volume"
    )
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
    def __init__(self, root: Path | str, run_id: str, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        super().__init__()
        self.run_id = validate_id(run_id, "run_id")
        self.root = Path(root)
        if not self.root.is_absolute():
            raise RemoteError(f"filesystem remote root must be absolute (got {root!s})")
        self.url = self.root.as_uri()
        self.where = f"{self.url}/{self.run_id}"
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"FilesystemRemote({self.url!r}, run_id={self.run_id!r})"

    # -- the layout ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _run_dir(self, *, create: bool) -> Iterator[SafeDir | None]:
        root = SafeDir.open_root(self.root, create=create)
        if root is None:
            yield None
            return
        with root, root.walk([self.run_id], create=create) as run:
            yield run

    def _lock(self, relay: SafeDir, what: str) -> PublishLock:
        return PublishLock(relay, LOCK_NAME, timeout_s=self.lock_timeout_s, holder=holder_name(what))

    def _read_state(self, relay: SafeDir | None) -> tuple[RemoteState | None, int]:
        data = relay.read_bytes(STATE_NAME) if relay is not None else None
        if data is None:
            return None, 0
        origin = f"{self.where}/{RELAY_DIR}/{STATE_NAME}"
        state, doc = RemoteState.from_json_bytes(data, origin=origin)
        counter = doc.get("revision")
        counter = int(counter) if isinstance(counter, (int, str)) and str(counter).isdigit() else 0
        if state.run_id != self.run_id:
            raise RemoteCorruptError(f"{origin}: names run {state.run_id!r}, expected {self.run_id!r}")
        return replace(state, revision=str(counter)), counter

    def _write_state(self, relay: SafeDir, state: RemoteState, counter: int) -> RemoteState:
        _phase("before_state")
        relay.write_atomic(STATE_NAME, state.to_json_bytes(revision=counter))
        return replace(state, revision=str(counter))

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
            with self._run_dir(create=False) as run:
                if run is None:
                    return None
                with run.walk([RELAY_DIR], create=False) as relay:
                    return self._read_state(relay)[0]
        except OSError as exc:
            raise self._wrap(exc, "reading state.json") from None

    def list_steps(self) -> list[int]:
        try:
            with self._run_dir(create=False) as run:
                if run is None:
                    return []
                with run.walk([CHECKPOINTS_DIR], create=False) as ckpts:
                    return sorted(step_dirs(ckpts), reverse=True)
        except OSError as exc:
            raise self._wrap(exc, "listing checkpoints") from None

    def claim(self, epoch: int, *, lease_id: str) -> RemoteState:
        try:
            with self._run_dir(create=True) as run:
                assert run is not None
                with run.need(RELAY_DIR) as relay:
                    with self._lock(relay, f"claim at epoch {epoch}"):
                        state, counter = self._read_state(relay)
                        new = decide_claim(
                            state, self.run_id, epoch=epoch, lease_id=lease_id, where=self.where
                        )
                        if new is None:
                            assert state is not None
                            return state
                        with run.need(CHECKPOINTS_DIR) as ckpts, relay.need(TRASH_DIR) as trash:
                            dirs = step_dirs(ckpts)
                            for s in leftover_steps(state, list(dirs)):
                                ckpts.move_to(dirs[s], trash)
                            ckpts.fsync()
                            claimed = self._write_state(relay, new, counter + 1)
                    with relay.need(TRASH_DIR) as trash:
                        trash.empty()
            log.info("%s: claimed at epoch %d (%s)", self.where, epoch, claimed.describe())
            return claimed
        except OSError as exc:
            raise self._wrap(exc, f"claim at epoch {epoch}") from None

    def push(self, ckpt: CommittedCheckpoint, *, epoch: int) -> PushResult:
        manifest, mbytes = load_local_manifest(ckpt, run_id=self.run_id)
        msha = sha256_bytes(mbytes)
        step = manifest.step

        def noop_result(reason: str, counter: int) -> PushResult:
            return PushResult(step, str(counter), 0, 0, len(manifest.files), noop=True, detail=reason)

        try:
            with self._run_dir(create=True) as run:
                assert run is not None
                with run.need(RELAY_DIR) as relay, relay.need(TMP_DIR) as tmp:
                    state, counter = self._read_state(relay)
                    noop = decide_push(state, step=step, epoch=epoch, manifest_sha256=msha, where=self.where)
                    if noop:
                        return noop_result(noop, counter)
                    stage, sent, files_sent, files_skipped = stage_checkpoint(
                        run,
                        tmp,
                        ckpt,
                        manifest,
                        mbytes,
                        msha,
                        lock_timeout_s=self.lock_timeout_s,
                        on_chunk=lambda _n: _phase("copy_chunk"),
                    )
                    _phase("staged")
                    with self._lock(relay, f"push of step {step} at epoch {epoch}"):
                        _phase("before_publish")
                        state, counter = self._read_state(relay)  # the compare of the compare-and-swap
                        noop = decide_push(
                            state, step=step, epoch=epoch, manifest_sha256=msha, where=self.where
                        )
                        if noop:
                            tmp.remove(stage)
                            return noop_result(noop, counter)
                        new = published_state(
                            state, self.run_id, step=step, epoch=epoch, manifest_sha256=msha
                        )
                        with run.need(CHECKPOINTS_DIR) as ckpts, relay.need(TRASH_DIR) as trash:
                            dest = CKPT_DIR_FMT % step
                            if ckpts.lstat(dest) is not None:
                                ckpts.move_to(dest, trash)
                            tmp.rename(stage, ckpts, dest)
                            dirs = step_dirs(ckpts)
                            for s in superseded_steps(state, list(dirs), push_step=step, push_epoch=epoch):
                                ckpts.move_to(dirs[s], trash)
                            ckpts.fsync()
                            counter += 1
                            self._write_state(relay, new, counter)
                    with contextlib.suppress(FileNotFoundError):
                        tmp.remove(stage + ".lock")
                    with relay.need(TRASH_DIR) as trash:
                        trash.empty()
                    clean_stale_stages(tmp, step)
            return PushResult(step, str(counter), sent, files_sent, files_skipped)
        except OSError as exc:
            raise self._wrap(exc, f"push of step {step}") from None

    def prune(self, keep_last_n: int, *, epoch: int | None = None) -> list[int]:
        try:
            with self._run_dir(create=False) as run:
                if run is None:
                    return []
                with run.need(RELAY_DIR) as relay:
                    with self._lock(relay, f"prune at epoch {epoch}"):
                        state, counter = self._read_state(relay)
                        check_prune_epoch(state, epoch, self.where)
                        with run.walk([CHECKPOINTS_DIR], create=False) as ckpts:
                            dirs = step_dirs(ckpts)
                            doomed = prune_plan(state, list(dirs), keep_last_n)
                            if not doomed:
                                return []
                            assert ckpts is not None
                            with relay.need(TRASH_DIR) as trash:
                                for s in doomed:
                                    ckpts.move_to(dirs[s], trash)
                            ckpts.fsync()
                        if state is not None:
                            self._write_state(relay, state, counter + 1)
                    with relay.need(TRASH_DIR) as trash:
                        trash.empty()
            log.info("%s: pruned remote steps %s", self.url, doomed)
            return doomed
        except OSError as exc:
            raise self._wrap(exc, "prune") from None

    # -- the final export --------------------------------------------------------------------------
    def push_final(self, export: CommittedCheckpoint, *, epoch: int) -> PushResult:
        manifest, mbytes = load_local_manifest(export, run_id=self.run_id)
        where = f"{self.url}/{remote_final_prefix(self.run_id)}"
        try:
            with self._run_dir(create=True) as run:
                assert run is not None
                with run.need(RELAY_DIR) as relay, relay.need(TMP_DIR) as tmp:
                    check_final_fence(self._read_state(relay)[0], epoch=epoch, where=where)
                    if (
                        self._read_bytes(None, f"{remote_final_prefix(self.run_id)}/{MANIFEST_NAME}")
                        == mbytes
                    ):
                        return PushResult(
                            manifest.step, None, 0, 0, len(manifest.files), noop=True, detail="same export"
                        )
                    stage, sent, files_sent, files_skipped = stage_checkpoint(
                        run,
                        tmp,
                        export,
                        manifest,
                        mbytes,
                        sha256_bytes(mbytes),
                        lock_timeout_s=self.lock_timeout_s,
                        on_chunk=lambda _n: _phase("copy_chunk"),
                        name=FINAL_DIR,
                    )
                    with self._lock(relay, f"push of the final export at epoch {epoch}"):
                        state, counter = self._read_state(relay)
                        check_final_fence(state, epoch=epoch, where=where)  # the compare, under the lock
                        with relay.need(TRASH_DIR) as trash:
                            if run.lstat(FINAL_DIR) is not None:
                                run.move_to(FINAL_DIR, trash)
                            tmp.rename(stage, run, FINAL_DIR)
                            run.fsync()
                    with contextlib.suppress(FileNotFoundError):
                        tmp.remove(stage + ".lock")
                    with relay.need(TRASH_DIR) as trash:
                        trash.empty()
            return PushResult(manifest.step, str(counter), sent, files_sent, files_skipped)
        except OSError as exc:
            raise self._wrap(exc, "push of the final export") from None

    # -- pull primitives -------------------------------------------------------------------------
    def _snapshot(self, revision: str | None) -> Snapshot:
        try:
            with self._run_dir(create=False) as run:
                if run is None:
                    return Snapshot("0", None, [])
                with (
                    run.walk([RELAY_DIR], create=False) as relay,
                    run.walk([CHECKPOINTS_DIR], create=False) as ck,
                ):
                    if relay is None:
                        state, counter, steps = None, 0, sorted(step_dirs(ck), reverse=True)
                    else:
                        with self._lock(relay, "reading a snapshot"):  # state and listing read together
                            state, counter = self._read_state(relay)
                            steps = sorted(step_dirs(ck), reverse=True)
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

    def _read_bytes(self, snap: Snapshot | None, path: str) -> bytes | None:
        *parents, name = path.split("/")
        try:
            root = SafeDir.open_root(self.root, create=False)
            if root is None:
                return None
            with root, root.walk(parents, create=False) as d:
                return d.read_bytes(name) if d is not None else None
        except OSError as exc:
            raise self._wrap(exc, f"reading {path}") from None

    def _download(
        self,
        snap: Snapshot,
        step: int,
        files: tuple[FileEntry, ...],
        dest: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        try:
            self._download_files(snap, remote_ckpt_prefix(self.run_id, step), files, dest, on_bytes)
        except FileNotFoundError:
            # Gone because the remote moved on (pruned after a newer push)? Then retry the pull
            # from the new head rather than falling back to an older checkpoint.
            if str(self._snapshot(None).revision) != snap.revision:
                raise RemoteError(
                    f"{self.url}: step {step} was pruned while being pulled (revision {snap.revision} moved); "
                    "pull again",
                    retryable=True,
                ) from None
            raise

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
            *parents, name = f"{prefix}/{f.path}".split("/")
            try:
                root = SafeDir.open_root(self.root, create=False)
                if root is None:
                    raise FileNotFoundError(errno.ENOENT, "the remote is gone", f"{prefix}/{f.path}")
                with root, root.walk(parents, create=False) as d:
                    if d is None:
                        raise FileNotFoundError(errno.ENOENT, "not on the remote", f"{prefix}/{f.path}")
                    fin = d.open_read(name)
                try:
                    with open(target, "wb", buffering=0) as fout:
                        copy_fd_hashed(fin, fout.fileno(), on_chunk=on_bytes)
                finally:
                    os.close(fin)
            except FileNotFoundError:
                raise  # the caller names the missing file
            except OSError as exc:
                raise self._wrap(exc, f"copying {prefix}/{f.path}") from None
