"""Warm standby: while a pod waits for a named run that another pod holds, it keeps the run's newest
remote checkpoint pulled and verified on its own volume, so that the handoff downloads only what changed.

The standby reads the remote's ``relay/state.json`` every ``standby_poll_s`` (jittered); when it names a step newer
than the newest on the volume, it pulls that checkpoint with the shared pull (``Remote.pull_newest``):
verified whole, installed under the run lock, and fetching only the files no checkpoint on the volume
already holds (``relay.ckpt.reuse``).  It keeps ``standby_keep_last_n`` checkpoints (files shared between
them are hard links, stored once).  When the pod is granted the lease, recovery (``relay.worker.recovery``)
finds the newest one on the volume and pulls from the remote only a newer one, again only its new files.

Which remote: the run spec's, when the run was submitted with one (``GET /api/runs/{id}``), else the
pod's own ``remote`` - the same rule the session applies once it holds the lease
(``relay.worker.session.effective_config``).  Nothing here talks to the commander beyond that one read,
and nothing here may write to the remote: a standby only reads.

A standby never delays a grant: stopping it aborts a pull between chunks (a pull already verifying its
copy finishes that first), and the session awaits that before it recovers, with the lease being renewed.
Its failures are logged and retried at the next poll; they never end the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relay.backoff import Backoff
from relay.worker.threads import in_thread

if TYPE_CHECKING:
    from relay.ckpt.layout import RunLayout
    from relay.client import CommanderClient
    from relay.config import WorkerConfig
    from relay.remote.base import Remote

log = logging.getLogger("relay.worker")


@dataclass(frozen=True)
class StandbyPull:
    """One checkpoint a standby put on the volume, and what it cost."""

    step: int
    bytes_downloaded: int
    bytes_reused: int
    files_downloaded: int


@dataclass
class StandbyLog:
    """What a standby did (tests, the benchmark): pulls, and the last error it retries after."""

    pulls: list[StandbyPull] = field(default_factory=list)
    last_error: str | None = None


async def standby_remote(cfg: WorkerConfig, client: CommanderClient) -> str | None:
    """The remote a standby for ``cfg.run_id`` follows: the run spec's, else the pod's; None: none."""
    from relay.client import CommanderError

    assert cfg.run_id is not None
    try:
        spec = (await client.get_run(cfg.run_id)).spec
    except CommanderError as exc:  # the pod's own remote is the next best guess
        log.info("standby: cannot read run %s (%s); following this pod's remote", cfg.run_id, exc)
        spec = None
    return spec.remote if spec is not None and spec.remote else cfg.remote


class Standby:
    """Follows one run's remote onto this volume until :meth:`stop` (see the module docstring)."""

    def __init__(self, cfg: WorkerConfig, run_id: str, remote_url: str) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.remote_url = remote_url
        self.log = StandbyLog()
        self._stop = asyncio.Event()
        self._cancel = threading.Event()  # read by the pull's thread between chunks
        self._task: asyncio.Task[None] | None = None
        self._followed: str | None = None  # the remote state (manifest sha256) last pulled to the end
        self._poll = Backoff(cfg.standby_poll_s, cfg.standby_poll_s)  # the one policy's jitter, no growth

    def start(self) -> None:
        log.info(
            "standby: keeping run %s's newest checkpoint from %s on this volume", self.run_id, self.remote_url
        )
        self._task = asyncio.ensure_future(self._follow())

    async def stop(self) -> None:
        """Abort a pull in flight and wait until the standby no longer touches the volume."""
        self._stop.set()
        self._cancel.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        from relay.ckpt.layout import RunLayout
        from relay.remote import open_remote
        from relay.remote.base import PullCancelled

        layout = RunLayout(self.cfg.relay_root, self.run_id)
        try:
            remote = open_remote(self.remote_url, self.run_id, token=self.cfg.token())
        except ValueError as exc:
            log.warning("standby: remote %s unusable (%s); no warm standby", self.remote_url, exc)
            return
        while not self._stop.is_set():
            try:
                await self._catch_up(remote, layout)
            except PullCancelled:
                return
            except Exception as exc:  # noqa: BLE001 - a standby retries at its next poll, whatever failed
                message = f"{type(exc).__name__}: {exc}"
                if message != self.log.last_error:
                    log.warning("standby: %s; retrying every %gs", message, self.cfg.standby_poll_s)
                self.log.last_error = message
            with contextlib.suppress(asyncio.TimeoutError):  # jittered: standbys started together spread out
                await asyncio.wait_for(self._stop.wait(), timeout=self._poll.delay(0))

    async def _catch_up(self, remote: Remote, layout: RunLayout) -> None:
        """Pull the remote's newest checkpoint when the volume has nothing as new."""
        from relay.ckpt.commit import prune_local
        from relay.ckpt.layout import newest_committed_step

        state = await in_thread(remote.state)
        if state is None or state.manifest_sha256 == self._followed:
            return
        have = await in_thread(newest_committed_step, layout)
        if have is not None and have >= state.step:
            return
        from relay.remote.base import PullReport

        report = PullReport()
        pulled = await in_thread(remote.pull_newest, layout, cancel=self._cancel.is_set, report=report)
        self._followed = state.manifest_sha256  # even when an older one was all that verified: once
        if pulled is None:
            return
        done = StandbyPull(pulled.step, report.bytes_received, report.bytes_reused, report.files_received)
        self.log.pulls.append(done)
        self.log.last_error = None
        log.info(
            "standby: step %d of run %s is on this volume (%d bytes downloaded, %d reused)",
            done.step,
            self.run_id,
            done.bytes_downloaded,
            done.bytes_reused,
        )
        await in_thread(prune_local, layout, self.cfg.standby_keep_last_n)
