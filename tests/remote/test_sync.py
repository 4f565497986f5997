"""The Syncer: never blocks, retries with backoff, stops on fencing, newest wins."""

import asyncio
import threading
import time
from pathlib import Path

import pytest

from relay.ckpt import CommittedCheckpoint, RunLayout
from relay.remote import PushResult, RemoteError, RemoteFencedError, Syncer, SyncEvent, open_remote
from tests.ckpt.util import make_committed


def _ckpt(step: int) -> CommittedCheckpoint:
    return CommittedCheckpoint(
        step=step, path=Path(f"/nonexistent/{step}"), manifest_sha256="0" * 64, total_bytes=1
    )


class ScriptedRemote:
    """push() plays a script of outcomes (exceptions or None for success); blocks while ``gate`` is clear."""

    url = "fake://remote"

    def __init__(self, script: list[BaseException | None] | None = None) -> None:
        self.script = list(script or [])
        self.pushed: list[tuple[int, int, float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.pruned: list[int] = []

    def push(self, ckpt: CommittedCheckpoint, *, epoch: int) -> PushResult:
        self.gate.wait(10)
        self.pushed.append((ckpt.step, epoch, time.monotonic()))
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return PushResult(ckpt.step, f"rev{ckpt.step}", 1, 1, 0)

    def prune(self, keep_last_n: int, *, epoch: int | None = None) -> list[int]:
        assert epoch == 3  # a lease's prune is fenced by its epoch, like its pushes
        self.pruned.append(keep_last_n)
        return []


def _run(remote, events, **kw) -> Syncer:
    return Syncer(remote, epoch=3, on_event=events.append, base_delay_s=0.01, max_delay_s=0.05, **kw).start()


def test_submit_never_blocks_on_a_slow_upload() -> None:
    remote = ScriptedRemote()
    remote.gate.clear()  # the upload hangs
    events: list[SyncEvent] = []
    syncer = _run(remote, events)
    try:
        t0 = time.perf_counter()
        for step in range(1, 50):
            syncer.submit(_ckpt(step))
        assert time.perf_counter() - t0 < 0.05
        assert syncer.status().pending_step == 49
    finally:
        remote.gate.set()
        assert syncer.wait_idle(5)
        syncer.stop()
    # newest wins: at most the first (in flight) and the newest were pushed
    assert [s for s, _e, _t in remote.pushed][-1] == 49 and len(remote.pushed) <= 2
    assert syncer.last_synced_step == 49


def test_retryable_failures_back_off_then_succeed() -> None:
    remote = ScriptedRemote(
        [RemoteError("503", retryable=True), RemoteError("429", retryable=True, retry_after_s=0.04), None]
    )
    events: list[SyncEvent] = []
    syncer = _run(remote, events)
    try:
        syncer.submit(_ckpt(5))
        assert syncer.wait_idle(5)
    finally:
        syncer.stop()
    assert [e.kind for e in events] == ["failed", "failed", "synced"]
    assert [e.attempt for e in events] == [1, 2, 3]
    assert all(e.retryable and e.retry_in_s > 0 for e in events[:2])
    times = [t for _s, _e, t in remote.pushed]
    assert times[2] - times[1] >= 0.04  # Retry-After honoured
    assert syncer.last_synced_step == 5 and syncer.last_error is None
    assert syncer.status().consecutive_failures == 0


def test_non_retryable_failure_drops_that_checkpoint_only() -> None:
    remote = ScriptedRemote([RemoteError("401 bad token", retryable=False)])
    events: list[SyncEvent] = []
    syncer = _run(remote, events)
    try:
        syncer.submit(_ckpt(5))
        assert syncer.wait_idle(5)
        assert [e.kind for e in events] == ["failed"] and events[0].retryable is False
        assert syncer.last_error == "401 bad token" and syncer.last_synced_step is None
        syncer.submit(_ckpt(6))
        assert syncer.wait_idle(5)
    finally:
        syncer.stop()
    assert syncer.last_synced_step == 6 and len(remote.pushed) == 2


def test_fenced_stops_the_syncer() -> None:
    fence = RemoteFencedError(remote_epoch=4, push_epoch=3, remote_step=9, where="fake")
    remote = ScriptedRemote([fence])
    events: list[SyncEvent] = []
    syncer = _run(remote, events)
    try:
        syncer.submit(_ckpt(5))
        assert syncer.wait_idle(5)
        assert syncer.fenced and [e.kind for e in events] == ["fenced"]
        assert syncer.submit(_ckpt(6)) is False
    finally:
        syncer.stop()
    assert len(remote.pushed) == 1


def test_unexpected_exceptions_are_retried_and_prune_follows_success() -> None:
    remote = ScriptedRemote([ConnectionResetError("peer reset"), None])
    events: list[SyncEvent] = []
    syncer = _run(remote, events, remote_keep_last_n=2)
    try:
        syncer.submit(_ckpt(1))
        assert syncer.wait_idle(5)
    finally:
        syncer.stop()
    assert [e.kind for e in events] == ["failed", "synced"] and "peer reset" in events[0].error
    assert remote.pruned == [2]


async def test_events_can_be_delivered_on_an_asyncio_loop() -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue = asyncio.Queue()
    owner = {}

    def on_event(e: SyncEvent) -> None:
        owner["thread"] = threading.current_thread()
        got.put_nowait(e)

    syncer = Syncer(ScriptedRemote(), epoch=1, on_event=on_event, callback_loop=loop).start()
    try:
        syncer.submit(_ckpt(7))  # returns at once; the loop keeps running
        event = await asyncio.wait_for(got.get(), 5)
    finally:
        await asyncio.to_thread(syncer.stop)
    assert event.kind == "synced" and event.step == 7
    assert owner["thread"] is threading.main_thread()


def test_next_process_finishes_what_a_dead_one_started(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "a", "run1")
    remote = open_remote(f"file://{tmp_path / 'remote'}", "run1")
    remote.push(make_committed(layout, 1), epoch=1)
    make_committed(layout, 2)  # committed, then the worker died before its upload finished
    events: list[SyncEvent] = []
    syncer = Syncer(
        open_remote(f"file://{tmp_path / 'remote'}", "run1"), epoch=1, on_event=events.append
    ).start()
    try:
        assert syncer.submit_latest(layout)
        assert syncer.wait_idle(10)
    finally:
        syncer.stop()
    assert [e.kind for e in events] == ["synced"] and remote.state().step == 2
    assert events[0].result.files_skipped == 2  # config.json and the empty COMPLETE were already there


@pytest.mark.parametrize("drain", [False, True])
def test_stop_with_and_without_drain(drain: bool) -> None:
    remote = ScriptedRemote([RemoteError("503", retryable=True)] * 5)
    syncer = Syncer(remote, epoch=1, base_delay_s=0.05, max_delay_s=0.1).start()
    syncer.submit(_ckpt(1))
    assert syncer.stop(drain=drain, timeout_s=10)
    if drain:  # kept retrying until the upload went through
        assert syncer.last_synced_step == 1 and len(remote.pushed) == 6
    else:  # gave up at once
        assert syncer.last_synced_step is None and len(remote.pushed) <= 1
