"""What one lease's parts share: the lease, its collaborators, the lifecycle, and the two ways a wait ends early.

A :class:`RunContext` is built by the run session for each grant and handed to the supervisor and the
handoff.  It holds no decisions of its own: it is the set of collaborators (lease keeper, reporter,
events, trainer log, checkpoints, progress, state.json) every phase of the lease works with, plus the
helpers all of them need: move the lifecycle (and refresh state.json), and await something unless the
fence trips or a stop arrives first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from relay.worker.lifecycle import Lifecycle, State

if TYPE_CHECKING:
    from relay.ckpt.layout import RunLayout
    from relay.client import CommanderClient
    from relay.config import WorkerConfig
    from relay.worker.checkpoints import Checkpoints
    from relay.worker.events import EventLog
    from relay.worker.fence import Fence
    from relay.worker.lease import Lease
    from relay.worker.lease_keeper import LeaseKeeper
    from relay.worker.progress import RunProgress
    from relay.worker.reporter import Reporter
    from relay.worker.signals import StopSignals
    from relay.worker.state_file import StateFile
    from relay.worker.trainer_log import TrainerLog

T = TypeVar("T")


class Interrupted(Exception):
    """A wait ended before its work did: the fence tripped (``fenced``), or a stop or cancel arrived."""

    def __init__(self, fenced: bool) -> None:
        super().__init__("fenced" if fenced else "interrupted")
        self.fenced = fenced


@dataclass
class RunContext:
    """The collaborators of one lease (built by :class:`relay.worker.session.RunSession`)."""

    cfg: WorkerConfig
    client: CommanderClient
    lease: Lease
    layout: RunLayout
    lifecycle: Lifecycle
    signals: StopSignals
    fence: Fence
    events: EventLog
    tlog: TrainerLog
    progress: RunProgress
    keeper: LeaseKeeper
    reporter: Reporter
    ckpts: Checkpoints
    state_file: StateFile
    _fence_task: asyncio.Task[str] | None = field(default=None, repr=False)

    # -- the lifecycle ----------------------------------------------------------------------------

    def goto(self, state: State) -> None:
        self.lifecycle.goto(state)
        self.write_state()

    def write_state(self, *, state: str | None = None, outcome: str | None = None) -> None:
        """Refresh state.json (the volume's debug view; see relay.worker.state_file)."""
        latest = self.ckpts.latest
        self.state_file.update(
            state=state or self.lifecycle.state.value,
            step=self.progress.step,
            committed_step=latest.step if latest is not None else None,
            synced_step=self.progress.remote_step,
            outcome=outcome,
        )

    # -- waits that end early -----------------------------------------------------------------------

    @property
    def cancel_requested(self) -> asyncio.Event:
        return self.keeper.cancel_requested

    def check_fence(self) -> None:
        if self.fence.tripped:
            raise Interrupted(fenced=True)

    def fence_waiter(self) -> asyncio.Task[str]:
        """One task that completes when the fence trips (shared by every wait of this lease)."""
        if self._fence_task is None:
            self._fence_task = asyncio.ensure_future(self.fence.wait())
        return self._fence_task

    async def guarded(self, coro: Awaitable[T], *, stop_on_signal: bool = True) -> T:
        """Await ``coro`` unless the fence trips (or, with ``stop_on_signal``, a stop or cancel arrives)
        first; then the work is cancelled and :class:`Interrupted` says which."""
        task = asyncio.ensure_future(coro)
        waits: set[asyncio.Future[object]] = {task, self.fence_waiter()}
        if stop_on_signal:
            waits |= {
                asyncio.ensure_future(self.signals.stop_requested.wait()),
                asyncio.ensure_future(self.cancel_requested.wait()),
            }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if w is not task and w is not self._fence_task:
                    w.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise Interrupted(fenced=self.fence.tripped)

    def close(self) -> None:
        if self._fence_task is not None:
            self._fence_task.cancel()
