"""The Remote interface and the rules every backend shares: fencing, pull order, verified pulls.

A remote holds, per run, ``<run_id>/checkpoints/step_%08d/...`` (each with the same manifest.json as
the local commit) and ``<run_id>/relay/state.json`` (run_id, newest step, epoch, manifest sha256).
A push publishes one checkpoint and the new state.json in one atomic step, so a reader sees either
the old (state, checkpoints) or the new, never a state.json naming a half-uploaded checkpoint.

Fencing (storage side): a push carries the lease epoch. ``decide_push`` is the one rule:

* remote epoch > push epoch      -> RemoteFencedError (a newer lease holder owns the run);
* same epoch, remote step > push -> no-op (this lease already published something newer, e.g. a
  retried older upload finishing after a newer one);
* same epoch, same step and same manifest -> no-op (idempotent re-push);
* otherwise (older epoch, or newer step) -> push. A push from a newer epoch also deletes remote
  checkpoints newer than its step in the same commit: they belong to a fenced-off lease's branch.

Pull order: the checkpoint state.json names first, then older ones, newest first; checkpoints newer
than state.json's step are skipped (a fenced writer's leftovers). A candidate that fails
verification is skipped with a reason; a transport failure raises (never a silent fallback).
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from relay.ckpt.errors import ManifestError
from relay.ckpt.fsutil import empty_dir, sha256_bytes
from relay.ckpt.install import install_pulled, same_local
from relay.ckpt.layout import CKPT_DIR_FMT, MANIFEST_NAME, RunLayout
from relay.ckpt.manifest import CommittedCheckpoint, FileEntry, Manifest, now_iso
from relay.ckpt.verify import SkippedCheckpoint, verify_checkpoint
from relay.ids import id_problem
from relay.urls import RemoteURLError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

STATE_FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
RELAY_DIR = "relay"
STATE_NAME = "state.json"
MAX_STATE_BYTES = 1024 * 1024


def remote_ckpt_prefix(run_id: str, step: int) -> str:
    """``<run_id>/checkpoints/step_%08d`` (POSIX, no trailing slash)."""
    return f"{run_id}/{CHECKPOINTS_DIR}/{CKPT_DIR_FMT % step}"


def remote_state_path(run_id: str) -> str:
    return f"{run_id}/{RELAY_DIR}/{STATE_NAME}"


class RemoteError(Exception):
    """A remote operation failed. ``retryable`` says whether the same call may succeed later
    (429, 5xx, network); ``retry_after_s`` is the server's hint when it gave one."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class RemoteFencedError(RemoteError):
    """The remote holds a newer lease epoch than this push: this worker has been fenced off."""

    def __init__(self, *, remote_epoch: int, push_epoch: int, remote_step: int, where: str) -> None:
        super().__init__(
            f"{where}: remote is at epoch {remote_epoch} (step {remote_step}), this push carries epoch "
            f"{push_epoch}; a newer lease holder owns the run, refusing to overwrite",
            retryable=False,
        )
        self.remote_epoch = remote_epoch
        self.push_epoch = push_epoch
        self.remote_step = remote_step


class RemoteConfigError(RemoteError, RemoteURLError):
    """A remote URL or repo id we cannot use (by the rule of ``relay.urls``)."""


def by_url_rule(rule: Callable[[str], _T], value: str) -> _T:
    """``rule(value)`` (a ``relay.urls`` check), its RemoteURLError raised as RemoteConfigError."""
    try:
        return rule(value)
    except RemoteURLError as exc:
        raise RemoteConfigError(str(exc)) from None


class RemoteCorruptError(RemoteError):
    """The remote holds something, but nothing usable: bad state.json, or no checkpoint verifies."""


@dataclass(frozen=True)
class RemoteState:
    run_id: str
    step: int
    epoch: int
    manifest_sha256: str
    revision: str | None = None
    updated_at: str | None = None

    def to_json_bytes(self, **extra: object) -> bytes:
        doc = {
            "format_version": STATE_FORMAT_VERSION,
            "run_id": self.run_id,
            "step": self.step,
            "epoch": self.epoch,
            "manifest_sha256": self.manifest_sha256,
            "updated_at": self.updated_at or now_iso(),
            **extra,
        }
        return (json.dumps(doc, indent=1) + "\n").encode()

    @classmethod
    def from_json_bytes(
        cls, data: bytes, *, origin: str, revision: str | None = None
    ) -> tuple[RemoteState, dict]:
        """Parse a state.json; returns the state and the raw document. Raises RemoteCorruptError."""
        if len(data) > MAX_STATE_BYTES:
            raise RemoteCorruptError(f"{origin}: state.json too large ({len(data)} bytes)")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RemoteCorruptError(f"{origin}: state.json is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise RemoteCorruptError(f"{origin}: state.json must be a JSON object")
        run_id = doc.get("run_id")
        if id_problem(run_id):
            raise RemoteCorruptError(f"{origin}: state.json run_id {id_problem(run_id)}")
        vals = {}
        for key in ("step", "epoch"):
            v = doc.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise RemoteCorruptError(
                    f"{origin}: state.json {key} must be a non-negative integer (got {v!r})"
                )
            vals[key] = v
        sha = doc.get("manifest_sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise RemoteCorruptError(f"{origin}: state.json manifest_sha256 must be 64 hex characters")
        updated = doc.get("updated_at")
        return (
            cls(
                run_id=run_id,
                step=vals["step"],
                epoch=vals["epoch"],
                manifest_sha256=sha,
                revision=revision,
                updated_at=updated if isinstance(updated, str) else None,
            ),
            doc,
        )


@dataclass(frozen=True)
class PushResult:
    step: int
    revision: str | None
    bytes_sent: int  # bytes of checkpoint files the remote did not already hold (by sha256)
    files_sent: int
    files_skipped: int  # files the remote already held: sent as references, 0 bytes
    noop: bool = False  # nothing was published (see ``detail``)
    detail: str | None = None


@dataclass
class PullReport:
    """What the last pull did: for events and ``relayctl``."""

    revision: str | None = None
    step: int | None = None
    skipped: list[SkippedCheckpoint] = field(default_factory=list)
    bytes_received: int = 0
    reused_local: bool = False


def decide_push(
    state: RemoteState | None, *, step: int, epoch: int, manifest_sha256: str, where: str
) -> str | None:
    """The fencing rule (module docstring). Returns None to push, or the reason for a no-op."""
    if state is None:
        return None
    if state.epoch > epoch:
        raise RemoteFencedError(
            remote_epoch=state.epoch, push_epoch=epoch, remote_step=state.step, where=where
        )
    if state.epoch == epoch:
        if state.step > step:
            return f"remote already holds step {state.step} from this epoch"
        if state.step == step and state.manifest_sha256 == manifest_sha256:
            return f"remote already holds step {step} (same manifest)"
    return None


def superseded_steps(
    state: RemoteState | None, steps: list[int], *, push_step: int, push_epoch: int
) -> list[int]:
    """Remote checkpoints a push from a newer epoch deletes: newer than its step (a fenced branch)."""
    if state is not None and push_epoch <= state.epoch:
        return []
    return sorted(s for s in steps if s > push_step)


def pull_candidates(state: RemoteState | None, steps: list[int]) -> tuple[list[int], list[tuple[int, str]]]:
    """Candidate steps in pull order, plus (step, reason) for steps skipped up front."""
    ordered = sorted(set(steps), reverse=True)
    if state is None:
        return ordered, []
    skipped = [
        (s, f"newer than relay/state.json (step {state.step}): left by a fenced-off writer")
        for s in ordered
        if s > state.step
    ]
    cands = [s for s in ordered if s <= state.step]
    return cands, skipped


def prune_plan(state: RemoteState | None, steps: list[int], keep_last_n: int) -> list[int]:
    """Steps to delete: all but the newest ``keep_last_n`` (>= 1) at or below state.json's step, never
    state.json's own step, plus any newer than it (fenced leftovers)."""
    keep_n = max(1, int(keep_last_n))
    ordered = sorted(set(steps), reverse=True)
    if state is None:
        return sorted(ordered[keep_n:])
    live = [s for s in ordered if s <= state.step]
    keep = set(live[:keep_n]) | {state.step}
    return sorted(s for s in ordered if s not in keep)


def load_local_manifest(ckpt: CommittedCheckpoint, *, run_id: str) -> tuple[Manifest, bytes]:
    """The manifest of a local committed checkpoint we are about to push, checked against ``ckpt``."""
    path = Path(ckpt.path) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RemoteError(
            f"local checkpoint {ckpt.path} is gone (pruned?); nothing to push", retryable=False
        ) from None
    except OSError as exc:
        raise RemoteError(f"cannot read {path}: {exc.strerror or exc}", retryable=False) from None
    if ckpt.manifest_sha256 and sha256_bytes(data) != ckpt.manifest_sha256:
        raise RemoteError(
            f"{path} changed since it was committed (sha256 differs); refusing to push it", retryable=False
        )
    try:
        manifest = Manifest.from_json_bytes(data, origin=str(path))
    except ManifestError as exc:
        raise RemoteError(str(exc), retryable=False) from None
    if manifest.run_id != run_id:
        raise RemoteError(f"{path} belongs to run {manifest.run_id!r}, this remote is bound to {run_id!r}")
    return manifest, data


def _tty_progress(total: int, desc: str):
    """A tqdm bar when stdout is a terminal, else None."""
    if not sys.stdout.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with huggingface_hub
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the remote: the revision, the state.json there and its checkpoint steps."""

    revision: str | None
    state: RemoteState | None
    steps: list[int]


class Remote(ABC):
    """A place checkpoints of one run are published to and pulled from. Blocking calls: run them in a
    thread (the Syncer does), never on an event loop."""

    run_id: str
    url: str

    def __init__(self) -> None:
        self.last_pull: PullReport | None = None

    # -- the contract --------------------------------------------------------------------------
    @abstractmethod
    def state(self) -> RemoteState | None:
        """The remote's relay/state.json for this run (with the current revision), None when absent."""

    @abstractmethod
    def push(self, ckpt: CommittedCheckpoint, *, epoch: int) -> PushResult:
        """Publish ``ckpt`` and the new state.json atomically. Raises RemoteFencedError / RemoteError."""

    @abstractmethod
    def prune(self, keep_last_n: int) -> list[int]:
        """Delete older remote checkpoints (separate commit from any push); returns the deleted steps."""

    @abstractmethod
    def list_steps(self) -> list[int]:
        """Checkpoint steps currently on the remote for this run (newest first)."""

    # -- backend primitives for the shared pull ---------------------------------------------------
    @abstractmethod
    def _snapshot(self, revision: str | None) -> Snapshot:
        """Read (revision, state, steps) consistently; ``revision`` pins it when given."""

    @abstractmethod
    def _read_manifest_bytes(self, snap: Snapshot, step: int) -> bytes | None:
        """The checkpoint's manifest.json at the snapshot, or None when absent."""

    @abstractmethod
    def _download(
        self,
        snap: Snapshot,
        step: int,
        files: tuple[FileEntry, ...],
        dest: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        """Fetch ``files`` of checkpoint ``step`` at the snapshot into ``dest`` (relative paths kept).
        Raise FileNotFoundError for a file the remote lacks, RemoteError for transport failures."""

    # -- the final export and pulls by path (relay.ckpt.final, relayctl pull) -----------------------------
    def push_final(self, export: CommittedCheckpoint, *, epoch: int) -> PushResult:
        """Publish a sealed final export under ``<run_id>/final/`` in one commit, fenced by ``epoch``
        (check_final_fence); files of an earlier final export it no longer has are removed in the same
        commit. Raises RemoteFencedError / RemoteError."""
        raise NotImplementedError

    def _read_bytes(self, snap: Snapshot, path: str) -> bytes | None:
        """A small file (a manifest) at ``path`` in the remote, at the snapshot; None when absent."""
        raise NotImplementedError

    def _download_files(
        self,
        snap: Snapshot,
        prefix: str,
        files: tuple[FileEntry, ...],
        dest: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        """Fetch ``prefix/<file>`` for each of ``files`` into ``dest`` (relative paths kept); raise
        FileNotFoundError for a file the remote lacks, RemoteError for transport failures."""
        raise NotImplementedError

    # -- shared pull -----------------------------------------------------------------------------
    def pull_newest(self, layout: RunLayout, *, revision: str | None = None) -> CommittedCheckpoint | None:
        """Download the newest remote checkpoint that verifies into ``layout.incoming_dir``, verify it,
        and rename it into ``layout.step_dir(step)``. None only when the remote has nothing for this run;
        RemoteCorruptError when it has checkpoints but none verifies; RemoteError on transport failure.
        Pinned to one revision (``revision`` or the head read at the start) from start to end."""
        if layout.run_id != self.run_id:
            raise RemoteError(f"layout is for run {layout.run_id!r}, remote for {self.run_id!r}")
        try:
            return self._pull_newest(layout, revision)
        except OSError as exc:  # the local side: disk full, permissions (remote I/O is already typed)
            raise RemoteError(
                f"pull from {self.url} into {layout.ckpt_dir} failed: {exc.strerror or exc}", retryable=True
            ) from None

    def _pull_newest(self, layout: RunLayout, revision: str | None) -> CommittedCheckpoint | None:
        snap = self._snapshot(revision)
        report = PullReport(revision=snap.revision)
        self.last_pull = report
        if not snap.steps and snap.state is None:
            return None
        candidates, early = pull_candidates(snap.state, snap.steps)
        report.skipped.extend(
            SkippedCheckpoint(Path(remote_ckpt_prefix(self.run_id, s)), r, "superseded") for s, r in early
        )
        layout.ensure()
        empty_dir(layout.incoming_dir)
        for step in candidates:
            where = f"{self.url} {remote_ckpt_prefix(self.run_id, step)}"

            def skip(reason: str, code: str, _where: str = where) -> None:
                log.warning("pull: skipping %s: %s", _where, reason)
                report.skipped.append(SkippedCheckpoint(Path(_where), reason, code))

            data = self._read_manifest_bytes(snap, step)
            if data is None:
                skip("no manifest.json on the remote", "no_manifest")
                continue
            msha = sha256_bytes(data)
            if snap.state is not None and step == snap.state.step and msha != snap.state.manifest_sha256:
                skip("manifest.json does not match the sha256 in relay/state.json", "hash_mismatch")
                continue
            try:
                manifest = Manifest.from_json_bytes(data, origin=where)
            except ManifestError as exc:
                skip(str(exc), "bad_manifest")
                continue
            if manifest.run_id != self.run_id or manifest.step != step:
                skip(f"manifest is for run {manifest.run_id!r} step {manifest.step}", "wrong_run")
                continue
            local = same_local(layout, step, msha)
            if local is not None:
                report.step, report.reused_local = step, True
                return local
            tmp = layout.incoming_dir / f"{CKPT_DIR_FMT % step}.{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            bar = _tty_progress(manifest.total_bytes, f"pull step {step}")
            received = [0]

            def on_bytes(n: int, _bar=bar, _received=received) -> None:
                _received[0] += n
                if _bar is not None:
                    _bar.update(n)

            try:
                self._download(snap, step, manifest.files, tmp, on_bytes)
            except FileNotFoundError as exc:
                skip(f"remote is missing {exc.filename or exc}", "missing_file")
                empty_dir(layout.incoming_dir)
                continue
            finally:
                if bar is not None:
                    bar.close()
                report.bytes_received += received[0]
            (tmp / MANIFEST_NAME).write_bytes(data)
            result = verify_checkpoint(tmp, expected_run_id=self.run_id, expected_step=step)
            if not result.ok:
                skip(f"downloaded copy does not verify: {result.reason}", result.code or "invalid")
                empty_dir(layout.incoming_dir)
                continue
            committed = install_pulled(layout, tmp, manifest, data)
            report.step = step
            return committed
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in report.skipped) or "no checkpoints listed"
        raise RemoteCorruptError(
            f"{self.url}: no remote checkpoint for run {self.run_id} verifies ({reasons})"
        )


def with_revision(state: RemoteState | None, revision: str | None) -> RemoteState | None:
    return None if state is None else replace(state, revision=revision)
