"""The Remote interface and the rules every backend shares: claims, fencing, pull order, verified pulls.

A remote holds, per run, ``<run_id>/checkpoints/step_%08d/...`` (each with the same manifest.json as
the local commit) and ``<run_id>/relay/state.json`` (:mod:`relay.remote.state`: the fencing epoch,
the newest step and its manifest's sha256).  A push publishes one checkpoint and the new state.json in
one atomic step, so a reader sees either the old (state, checkpoints) or the new, never a state.json
naming a half-uploaded checkpoint.

Fencing (storage side), two rules, each one pure function here and one compare-and-swap commit in
the backends (the Hub: ``parent_commit``; ``file://``: the publish lock):

* ``decide_claim``: a new lease holder, before it trains, records its epoch in state.json (the
  checkpoint stays). The remote at an epoch below the lease's: claim it. At the lease's own epoch,
  by this lease's claim: already done. Otherwise (a newer epoch, or the same one claimed by another
  lease): RemoteAheadError, and the commander must jump past that epoch. A claim also drops
  checkpoints newer than state.json's step (a fenced writer's leftovers) in the same commit.
* ``decide_push``: remote epoch > push epoch -> RemoteFencedError (a newer lease holder owns the
  run; checked again at the moment of publishing, so a push already uploading when the claim
  landed is refused too); same epoch and a newer or identical checkpoint there -> no-op; otherwise
  push. A push from a newer epoch (one that did not claim) deletes checkpoints newer than its step
  in the same commit: they belong to a fenced-off lease's branch.

Pull order: the checkpoint state.json names first, then older ones, newest first; checkpoints newer
than state.json's step are skipped (a fenced writer's leftovers). A candidate that fails
verification is skipped with a reason; a transport failure raises (never a silent fallback).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from relay.ckpt.errors import ManifestError
from relay.ckpt.fsutil import sha256_bytes
from relay.ckpt.layout import CKPT_DIR_FMT, MANIFEST_NAME, RunLayout
from relay.ckpt.manifest import CommittedCheckpoint, FileEntry, Manifest, now_iso
from relay.ckpt.verify import SkippedCheckpoint
from relay.remote.errors import (
    PullCancelled,
    RemoteAheadError,
    RemoteConfigError,
    RemoteCorruptError,
    RemoteError,
    RemoteFencedError,
    UnsafeLayoutError,
)
from relay.remote.state import STATE_FORMAT_VERSION, RemoteState
from relay.urls import RemoteURLError

__all__ = [
    "STATE_FORMAT_VERSION",
    "PullCancelled",
    "PullReport",
    "PushResult",
    "Remote",
    "RemoteAheadError",
    "RemoteConfigError",
    "RemoteCorruptError",
    "RemoteError",
    "RemoteFencedError",
    "RemoteState",
    "Snapshot",
    "UnsafeLayoutError",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

CHECKPOINTS_DIR = "checkpoints"
RELAY_DIR = "relay"
STATE_NAME = "state.json"


def remote_ckpt_prefix(run_id: str, step: int) -> str:
    """``<run_id>/checkpoints/step_%08d`` (POSIX, no trailing slash)."""
    return f"{run_id}/{CHECKPOINTS_DIR}/{CKPT_DIR_FMT % step}"


def remote_state_path(run_id: str) -> str:
    return f"{run_id}/{RELAY_DIR}/{STATE_NAME}"


def by_url_rule(rule: Callable[[str], _T], value: str) -> _T:
    """``rule(value)`` (a ``relay.urls`` check), its RemoteURLError raised as RemoteConfigError."""
    try:
        return rule(value)
    except RemoteURLError as exc:
        raise RemoteConfigError(str(exc)) from None


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
    bytes_received: int = 0  # over the wire
    reused_local: bool = False  # the volume held this very checkpoint: nothing pulled
    files_received: int = 0
    files_reused: int = 0  # linked from checkpoints already on the volume (relay.ckpt.reuse)
    bytes_reused: int = 0


def decide_push(
    state: RemoteState | None, *, step: int, epoch: int, manifest_sha256: str, where: str
) -> str | None:
    """The push rule (module docstring). Returns None to push, or the reason for a no-op."""
    if state is None:
        return None
    if state.epoch > epoch:
        raise RemoteFencedError(
            remote_epoch=state.epoch, push_epoch=epoch, remote_step=state.step, where=where
        )
    if state.epoch == epoch and state.step is not None:
        if state.step > step:
            return f"remote already holds step {state.step} from this epoch"
        if state.step == step and state.manifest_sha256 == manifest_sha256:
            return f"remote already holds step {step} (same manifest)"
    return None


def published_state(
    state: RemoteState | None, run_id: str, *, step: int, epoch: int, manifest_sha256: str
) -> RemoteState:
    """What state.json says after a push: the checkpoint, and the claim when it is this epoch's."""
    claimed_by = state.claimed_by if state is not None and state.epoch == epoch else None
    return RemoteState.published(
        run_id, step=step, epoch=epoch, manifest_sha256=manifest_sha256, claimed_by=claimed_by
    )


def decide_claim(
    state: RemoteState | None, run_id: str, *, epoch: int, lease_id: str, where: str
) -> RemoteState | None:
    """The claim rule (module docstring): the state.json to write, or None when this lease already
    claimed the remote. Raises RemoteAheadError when the remote is at or above the lease's epoch."""
    if state is None:
        return RemoteState(run_id, epoch, None, None, None, lease_id, updated_at=now_iso())
    if state.epoch == epoch and state.claimed_by == lease_id:
        return None
    if state.epoch >= epoch:
        raise RemoteAheadError(remote_epoch=state.epoch, lease_epoch=epoch, where=where)
    return replace(state, epoch=epoch, claimed_by=lease_id, revision=None, updated_at=now_iso())


def superseded_steps(
    state: RemoteState | None, steps: list[int], *, push_step: int, push_epoch: int
) -> list[int]:
    """Remote checkpoints a push from a newer epoch deletes: newer than its step (a fenced branch)."""
    if state is not None and push_epoch <= state.epoch:
        return []
    return sorted(s for s in steps if s > push_step)


def leftover_steps(state: RemoteState | None, steps: list[int]) -> list[int]:
    """Checkpoints newer than state.json's step (all of them when it names none): no publish ever
    named them, a fenced writer left them. A claim deletes them; pulls skip them."""
    if state is None:
        return []
    newest = state.step if state.step is not None else -1
    return sorted(s for s in steps if s > newest)


def pull_candidates(state: RemoteState | None, steps: list[int]) -> tuple[list[int], list[tuple[int, str]]]:
    """Candidate steps in pull order, plus (step, reason) for steps skipped up front."""
    ordered = sorted(set(steps), reverse=True)
    if state is None:
        return ordered, []
    left = set(leftover_steps(state, ordered))
    names = f"step {state.step}" if state.step is not None else "no checkpoint"
    skipped = [
        (s, f"newer than relay/state.json ({names}): left by a fenced-off writer")
        for s in ordered
        if s in left
    ]
    return [s for s in ordered if s not in left], skipped


def prune_plan(state: RemoteState | None, steps: list[int], keep_last_n: int) -> list[int]:
    """Steps to delete: all but the newest ``keep_last_n`` (>= 1) at or below state.json's step, never
    state.json's own step, plus any newer than it (fenced leftovers)."""
    keep_n = max(1, int(keep_last_n))
    ordered = sorted(set(steps), reverse=True)
    if state is None:
        return sorted(ordered[keep_n:])
    left = set(leftover_steps(state, ordered))
    live = [s for s in ordered if s not in left]
    keep = set(live[:keep_n]) | ({state.step} if state.step is not None else set())
    return sorted(s for s in ordered if s not in keep)


def check_prune_epoch(state: RemoteState | None, epoch: int | None, where: str) -> None:
    """A prune by a lease is a write like a push: refused once a newer epoch holds the remote."""
    if epoch is not None and state is not None and state.epoch > epoch:
        raise RemoteFencedError(
            remote_epoch=state.epoch, push_epoch=epoch, remote_step=state.step, where=where
        )


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

    # -- the contract --------------------------------------------------------------------------
    @abstractmethod
    def state(self) -> RemoteState | None:
        """The remote's relay/state.json for this run (with the current revision), None when absent."""

    @abstractmethod
    def claim(self, epoch: int, *, lease_id: str) -> RemoteState:
        """Record ``epoch`` (this lease's) in state.json in one compare-and-swap commit, keeping the
        checkpoint it names and dropping leftovers newer than it (``decide_claim``); from then on every
        older epoch's push is refused. Returns the state as claimed. Raises RemoteAheadError when the
        remote is at or above ``epoch``, RemoteError otherwise."""

    @abstractmethod
    def push(self, ckpt: CommittedCheckpoint, *, epoch: int) -> PushResult:
        """Publish ``ckpt`` and the new state.json atomically. Raises RemoteFencedError / RemoteError."""

    @abstractmethod
    def prune(self, keep_last_n: int, *, epoch: int | None = None) -> list[int]:
        """Delete older remote checkpoints (separate commit from any push); returns the deleted steps.
        With ``epoch`` (a lease's), refused with RemoteFencedError once a newer epoch holds the remote."""

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
    def pull_newest(
        self,
        layout: RunLayout,
        *,
        revision: str | None = None,
        cancel: Callable[[], bool] | None = None,
        report: PullReport | None = None,
    ) -> CommittedCheckpoint | None:
        """Download the newest remote checkpoint that verifies into ``layout.incoming_dir``, verify it,
        and rename it into ``layout.step_dir(step)``. None only when the remote has nothing published for
        this run; RemoteCorruptError when it has checkpoints but none verifies; RemoteError on transport
        failure. Pinned to one revision (``revision`` or the head read at the start) from start to end.

        Files that a checkpoint already on the volume holds (same sha256) are linked, not downloaded
        (``relay.ckpt.reuse``).  ``report``, when given, is filled in as the pull goes: the candidates
        skipped and why, the bytes that came over the wire and those reused.  ``cancel()`` true aborts the pull between chunks with :class:`PullCancelled`."""
        if layout.run_id != self.run_id:
            raise RemoteError(f"layout is for run {layout.run_id!r}, remote for {self.run_id!r}")
        from relay.remote.pull import pull_newest

        try:
            return pull_newest(self, layout, revision, cancel, report if report is not None else PullReport())
        except OSError as exc:  # the local side: disk full, permissions (remote I/O is already typed)
            raise RemoteError(
                f"pull from {self.url} into {layout.ckpt_dir} failed: {exc.strerror or exc}", retryable=True
            ) from None


def with_revision(state: RemoteState | None, revision: str | None) -> RemoteState | None:
    return None if state is None else replace(state, revision=revision)
