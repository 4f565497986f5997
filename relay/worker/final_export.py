"""At completion: publish the trainer's final export (RELAY_FINAL_DIR) to the remote, fenced.

A finished run's deliverable is what its trainer saved at the end (the model or LoRA adapter, tokenizer,
config); the pod it was written on may be gone a minute later.  So when the trainer exits 0 on its own and
a remote is set, the worker seals the directory (relay.ckpt.final: a manifest of every file) and
publishes it under ``<run_id>/final/`` in one commit, at the lease's epoch, retrying transient failures
for up to ``final_sync_timeout_s``.  The run is released as completed only once that commit exists; a
failure releases it as failed (restartable: the next pod resumes from the last checkpoint, finds nothing
left to train, exports and publishes again).  A trainer that writes no final export (the mock, a Megatron
script without ``--save-hf``) has nothing to publish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from relay.backoff import Backoff
from relay.worker.context import RunContext
from relay.worker.threads import in_thread

log = logging.getLogger("relay.worker")

PUBLISH_BACKOFF = Backoff(base_s=1.0, max_s=30.0)


@dataclass(frozen=True)
class Published:
    """What ``publish_final`` did: ``error`` is None on success or when there was nothing to publish."""

    published: bool
    detail: str
    error: str | None = None


async def publish_final(ctx: RunContext, step: int) -> Published:
    from relay.ckpt.errors import CheckpointError
    from relay.ckpt.final import seal_final
    from relay.remote import RemoteError, RemoteFencedError, open_remote

    final = ctx.layout.final_dir
    if ctx.cfg.remote is None or not final.is_dir() or not any(final.iterdir()):
        return Published(False, "")
    try:
        export = await in_thread(seal_final, final, run_id=ctx.lease.run_id, step=step, epoch=ctx.lease.epoch)
    except CheckpointError as exc:
        return Published(False, "", f"cannot seal the final export: {exc}")
    remote = open_remote(ctx.cfg.remote, ctx.lease.run_id, token=ctx.cfg.token())
    deadline = time.monotonic() + ctx.cfg.final_sync_timeout_s
    started = time.monotonic()
    attempt = 0
    while True:
        ctx.check_fence()
        try:
            result = await ctx.guarded(
                in_thread(remote.push_final, export, epoch=ctx.lease.epoch), stop_on_signal=False
            )
            break
        except RemoteFencedError as exc:
            ctx.fence.trip(f"final export refused by the remote: {exc}")
            ctx.check_fence()
        except RemoteError as exc:
            if ctx.signals.stopping and ctx.signals.at is not None:  # a signal meanwhile: grace_s bounds it
                deadline = min(deadline, ctx.signals.at + ctx.cfg.grace_s)
            left = deadline - time.monotonic()
            if not exc.retryable or left <= 0 or ctx.signals.force_requested.is_set():
                return Published(False, "", f"final export not published to {remote.url}: {exc}")
            delay = PUBLISH_BACKOFF.delay(attempt, at_least_s=exc.retry_after_s, at_most_s=left)
            log.warning("final export push failed (%s); retrying in %.1fs", exc, delay)
            ctx.tlog.note(f"final export push failed: {exc}; retrying in {delay:.1f}s")
            attempt += 1
            await asyncio.sleep(delay)
    ctx.events.emit(
        "final_published",
        step=step,
        files=export.file_count,
        bytes=export.total_bytes,
        bytes_sent=result.bytes_sent,
        revision=result.revision,
        publish_s=round(time.monotonic() - started, 3),
    )
    where = f"{remote.url}/{ctx.lease.run_id}/final"
    return Published(
        True,
        f"final export published to {where} ({export.file_count} files, {export.total_bytes / 1e6:.1f} MB)",
    )
