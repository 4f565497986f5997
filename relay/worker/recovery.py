"""Which checkpoint a new lease resumes from: the volume's, the remote's, or none (cold start).

The rules, in order:

1. A predecessor on this volume may have left complete checkpoints uncommitted (kill -9 between the
   trainer's save and the commit).  Commit them, but push nothing before the resume point is chosen:
   this epoch is newer than the remote's, so pushing an older local step would replace the remote's
   newer checkpoints (found by the chaos suite: a graceful handoff's checkpoint 120 wiped by a stale
   step 50 from a dead pod's volume).
2. Verify the local checkpoints, newest first; quarantine those that fail and say why
   (:func:`relay.ckpt.verify.recover_local`).  Hashing waits until it is needed: first only sizes are
   checked, and when rule 4 pulls a newer checkpoint the volume's are not hashed at all (the pull
   verifies what it installs).
3. The remote's state is the one this lease's claim left (:func:`claim_remote`, done before anything
   else: from then on no older epoch can publish, so what recovery sees is final).
4. The remote holds a strictly newer step than the local survivor (or there is none): pull the
   newest remote checkpoint that verifies, downloading only the files no checkpoint on the volume
   holds (a warm standby kept the previous one here: ``relay.worker.standby``).  When nothing on the
   remote verifies, the local checkpoint is the best there is; with no local one either, recovery
   fails.
5. Otherwise the local checkpoint; when the remote is behind it, hand it to the syncer so the remote
   catches up with this volume.
6. Nothing anywhere: cold start.

Every path ends in one ``resumed`` event (step and source: ``local``, ``remote`` or ``cold_start``).
All slow work (hashing, listing, the download) runs in daemon threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from relay.backoff import Backoff
from relay.worker.threads import in_thread

if TYPE_CHECKING:
    from relay.ckpt.layout import RunLayout
    from relay.ckpt.manifest import CommittedCheckpoint
    from relay.remote.base import PullReport, Remote, RemoteCorruptError, RemoteState
    from relay.worker.checkpoints import Checkpoints
    from relay.worker.events import EventLog
    from relay.worker.lease import Lease

log = logging.getLogger("relay.worker")

#: claiming the remote at recovery: a few quick tries, then the error decides
CLAIM_BACKOFF = Backoff(base_s=0.5, max_s=4.0)
CLAIM_ATTEMPTS = 4


def remote_is_newer(local_step: int | None, remote_step: int | None) -> bool:
    """Rule 4: pull only when the remote holds a strictly newer step than the volume."""
    return remote_step is not None and (local_step is None or remote_step > local_step)


def remote_is_behind(local_step: int, remote_step: int | None) -> bool:
    """Rule 5: the volume's checkpoint is newer than anything on the remote: push it."""
    return remote_step is None or remote_step < local_step


async def claim_remote(remote: Remote, lease: Lease, *, events: EventLog) -> RemoteState:
    """Record this lease's epoch on the remote (one compare-and-swap commit) before anything trains,
    retrying retryable errors with backoff; returns the state as claimed and says so in a
    ``remote_claimed`` event. RemoteAheadError (the remote is at or above the lease's epoch) and
    non-retryable errors are raised."""
    from relay.remote.base import RemoteError

    for attempt in range(CLAIM_ATTEMPTS):
        try:
            state = await in_thread(remote.claim, lease.epoch, lease_id=lease.lease_id)
            break
        except RemoteError as exc:
            if not getattr(exc, "retryable", False) or attempt == CLAIM_ATTEMPTS - 1:
                raise
            delay = CLAIM_BACKOFF.delay(attempt, at_least_s=getattr(exc, "retry_after_s", None))
            log.warning("claiming the remote failed (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
    events.emit(
        "remote_claimed",
        message=f"claimed {remote.url} at epoch {lease.epoch} ({state.describe()})",
        remote_step=state.step,
        step_epoch=state.step_epoch,
        revision=state.revision,
    )
    return state


async def recover(
    layout: RunLayout, ckpts: Checkpoints, *, events: EventLog, claimed: RemoteState | None
) -> CommittedCheckpoint | None:
    """Choose the checkpoint to resume from (see the module's rules), make it ``ckpts.latest``, and
    report it; None means a cold start.  ``claimed`` is the remote's state after this lease's claim.
    Raises when the remote has something but nothing usable and the volume has nothing either
    (``RemoteError``; ``retryable`` says whether another pod may try).

    The volume's checkpoints are hashed only when they may be the resume point: when the remote holds a
    newer step than the newest the volume claims (sizes checked, no hashing), the pull comes first and
    verifies what it installs; a handoff to a warm standby then never hashes the standby's copy twice."""
    from relay.ckpt.verify import recover_local

    await ckpts.commit_ready(sync=False)  # rule 1
    sized = await in_thread(recover_local, layout, rehash=False)  # sizes only: what the volume claims
    remote_step = _remote_step(ckpts, claimed)  # rule 3
    unusable: RemoteCorruptError | None = None
    if remote_is_newer(_step(sized.checkpoint), remote_step):  # rule 4, before hashing the volume
        pulled, unusable = await _try_pull(layout, ckpts, events, skipped=sized.skipped)
        if pulled is not None:
            return pulled
    scan = await in_thread(recover_local, layout)  # rule 2: verifies; quarantines what fails
    for skipped in getattr(scan, "skipped", []) or []:
        log.warning("skipping checkpoint %s: %s", skipped.path, skipped.reason)
    local = scan.checkpoint
    if unusable is None and remote_is_newer(_step(local), remote_step):  # the claimed one did not verify
        pulled, unusable = await _try_pull(layout, ckpts, events, skipped=scan.skipped)
        if pulled is not None:
            return pulled
    if unusable is not None:
        if local is None:
            raise unusable
        # nothing on the remote verifies: the volume's checkpoint is the best there is
        log.warning("remote unusable (%s); resuming from the local step %d", unusable, local.step)
    if local is not None:  # rule 5
        ckpts.adopt(local)
        events.emit(
            "resumed",
            step=local.step,
            source="local",
            path=str(local.path),
            remote_step=remote_step,
            downloaded_bytes=0,
        )
        if ckpts.syncer is not None and remote_is_behind(local.step, remote_step):
            ckpts.syncer.submit(local)  # the remote is behind this volume: catch it up
        return local
    events.emit("resumed", step=0, source="cold_start", message="no checkpoint found: cold start")  # rule 6
    return None


def _step(ckpt: CommittedCheckpoint | None) -> int | None:
    return ckpt.step if ckpt is not None else None


def _remote_step(ckpts: Checkpoints, claimed: RemoteState | None) -> int | None:
    """Rule 3: the remote's step as this lease's claim left it (None: no remote, or nothing published),
    told to the syncer too."""
    if ckpts.remote is None:
        return None
    remote_step = claimed.step if claimed is not None else None
    if ckpts.syncer is not None:
        ckpts.syncer.remote_seen(remote_step)
    return remote_step


async def _try_pull(
    layout: RunLayout, ckpts: Checkpoints, events: EventLog, *, skipped: list
) -> tuple[CommittedCheckpoint | None, RemoteCorruptError | None]:
    """Rule 4's pull: what it installed, or why nothing on the remote is usable (the caller decides
    whether the volume's checkpoint can stand in)."""
    from relay.remote.base import RemoteCorruptError

    try:
        return await _pull(layout, ckpts, events, skipped=skipped), None
    except RemoteCorruptError as exc:
        return None, exc


async def _pull(
    layout: RunLayout, ckpts: Checkpoints, events: EventLog, *, skipped: list
) -> CommittedCheckpoint | None:
    """Rule 4: the newest remote checkpoint that verifies, installed and adopted (None: the remote holds
    nothing after all); only the files no checkpoint on the volume holds are downloaded."""
    remote = ckpts.remote
    assert remote is not None
    from relay.remote.base import PullReport

    started = time.monotonic()
    report = PullReport()  # what the pull moved (only the files the volume lacked) and what it passed over
    pulled = await in_thread(remote.pull_newest, layout, report=report)
    if pulled is None:
        return None
    ckpts.adopt(pulled)
    events.emit(
        "resumed",
        step=pulled.step,
        source="remote",
        path=str(pulled.path),
        bytes=getattr(pulled, "total_bytes", None),
        downloaded_bytes=report.bytes_received,
        reused_bytes=report.bytes_reused,
        download_s=round(time.monotonic() - started, 3),
        skipped=len(skipped or []) or None,
        remote_skipped=_skips(report) or None,
    )
    return pulled


def _skips(report: PullReport) -> list[str]:
    """The remote checkpoints the pull passed over, each with its reason, for the ``resumed`` event (a
    superseded one, older than the state's step, is no news and left out)."""
    return [f"{s.path}: {s.reason} ({s.code})" for s in report.skipped if s.code != "superseded"]
