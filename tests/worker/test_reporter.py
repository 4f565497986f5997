"""Reports are best-effort: events in order, retried when the commander is down, 409 fences."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.client import CommanderUnreachable, Fenced
from relay.schema import ReportResponse
from relay.worker.events import EventLog
from relay.worker.fence import Fence
from relay.worker.progress import RunProgress
from relay.worker.reporter import Reporter
from relay.worker.trainer_log import TrainerLog
from relay_testkit.leases import make_lease


class FakeClient:
    def __init__(self) -> None:
        self.reports: list = []
        self.fail: type[Exception] | None = None

    async def report(self, run_id: str, req):  # type: ignore[no-untyped-def]
        if self.fail is not None:
            raise self.fail("nope")
        self.reports.append(req)
        return ReportResponse(ok=True)


def make(tmp_path: Path, client: FakeClient) -> tuple[Reporter, EventLog, TrainerLog, Fence]:
    progress = RunProgress()
    events = EventLog(tmp_path / "events.jsonl", make_lease(epoch=2))
    tlog = TrainerLog(tmp_path / "logs", max_bytes=1 << 20, backups=1)
    fence = Fence(asyncio.get_running_loop())
    rep = Reporter(
        client,
        make_lease(epoch=2),
        progress=progress,
        events=events,
        trainer_log=tlog,
        fence=fence,
        interval_s=60,
    )
    return rep, events, tlog, fence


async def test_events_in_order_with_logs_once_and_retry_after_failure(tmp_path: Path) -> None:
    client = FakeClient()
    rep, events, tlog, fence = make(tmp_path, client)
    rep.progress.trained(7, {"loss": 1.5})
    tlog.add("stdout", "hello")
    client.fail = CommanderUnreachable
    events.emit("acquired")  # the commander records this one itself: never reported
    events.emit("resumed", step=5, source="local")
    await rep.flush(1.0)
    assert client.reports == [] and events.pending_count() == 1  # kept for the next try
    client.fail = None
    events.emit("trainer_started", pid=1)
    await rep.flush(1.0)
    assert [r.event.value for r in client.reports] == ["resumed", "trainer_started"]
    first = client.reports[0]
    assert first.step == 7 and first.metrics == {"loss": 1.5} and "source=local" in first.message
    assert [line.line for line in first.log_tail] == ["hello"]
    assert client.reports[1].log_tail is None  # shipped once
    assert events.pending_count() == 0
    tlog.close()
    events.close()


async def test_a_409_on_a_report_fences(tmp_path: Path) -> None:
    client = FakeClient()
    rep, events, tlog, fence = make(tmp_path, client)
    client.fail = Fenced
    await rep.flush(1.0)
    assert fence.tripped and "refused a progress report" in (fence.reason or "")
    tlog.close()
    events.close()
