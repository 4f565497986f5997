"""Small, deterministic replays of what the chaos runs found, next to the suite that found them."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from relay.ckpt.layout import RunLayout
from relay.client import CommanderUnreachable
from relay.schema import ReportResponse
from relay.worker.events import EventLog
from relay.worker.fence import Fence
from relay.worker.progress import RunProgress
from relay.worker.reporter import Reporter
from relay.worker.trainer_log import TrainerLog
from relay_testkit.chaos_cluster import ChaosCluster, ChaosSettings, read_jsonl
from relay_testkit.leases import make_lease
from trainer_blackbox.checkpoint import write_complete


class FlakyCommander:
    """Refuses the first ``down`` reports as unreachable (a commander restarting), then takes them."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.reports: list = []

    async def report(self, run_id: str, req):  # type: ignore[no-untyped-def]
        if self.down > 0:
            self.down -= 1
            raise CommanderUnreachable("commander restarting")
        self.reports.append(req)
        return ReportResponse(ok=True)


async def test_the_final_report_before_a_release_outlives_a_commander_blip(tmp_path: Path) -> None:
    """Soak finding: a run completed while the commander restarted; the flush before the release tried
    once, the release (retried) succeeded, and the commander showed the run completed at its previous
    checkpoint. The flush now retries within its time budget."""
    client = FlakyCommander(down=3)
    progress = RunProgress()
    events = EventLog(tmp_path / "events.jsonl", make_lease(epoch=1))
    tlog = TrainerLog(tmp_path / "logs", max_bytes=1 << 20, backups=1)
    rep = Reporter(
        client,
        make_lease(epoch=1),
        progress=progress,
        events=events,
        trainer_log=tlog,
        fence=Fence(asyncio.get_running_loop()),
        interval_s=60,
    )
    progress.trained(300)
    progress.committed(300, "/vol/runs/r/ckpt/step_00000300")
    events.emit("checkpoint_committed", step=300)
    assert await rep.flush(2.0) is True
    assert [r.event.value for r in client.reports] == ["checkpoint_committed"]
    assert client.reports[-1].step == 300 and client.reports[-1].checkpoint.step == 300
    # and when the commander stays away the flush gives up within its budget instead of hanging
    client.down = 10**6
    events.emit("checkpoint_synced", step=300)
    started = asyncio.get_running_loop().time()
    assert await rep.flush(0.3) is False
    assert asyncio.get_running_loop().time() - started < 1.0
    tlog.close()
    events.close()


def test_a_dead_pods_stale_checkpoint_never_overwrites_a_newer_remote(tmp_path: Path) -> None:
    """Found by the contention test: a pod's volume holds a complete staged checkpoint that a
    killed trainer left behind, older than what the remote got from a later graceful handoff. The next
    worker on that volume commits it (nothing is thrown away) but must neither resume from it nor push
    it: its newer epoch would make the remote take the stale step and drop the newer ones."""
    run = "stale"
    train = {"max_steps": 100_000, "save_steps": 5, "step_seconds": 0.03, "checkpoint_bytes": 4096}
    extra = {"TRAIN": json.dumps(train)}
    with ChaosCluster(tmp_path, ChaosSettings(volumes=2)) as c:
        b = c.spawn_worker(run, volume=c.volumes[1], extra_env=extra)
        b_events = b.volume / "runs" / run / "events.jsonl"
        deadline = time.monotonic() + 30
        while len({e["step"] for e in read_jsonl(b_events) if e["event"] == "checkpoint_synced"}) < 3:
            assert time.monotonic() < deadline and b.poll() is None, b.output()[-2000:]
            time.sleep(0.02)
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(30) == 0, b.output()[-2000:]
        handed_on = max(e["step"] for e in read_jsonl(b_events) if e["event"] == "checkpoint_synced")
        assert handed_on > 10

        # what a trainer killed on the other pod long ago left: a complete, never committed step 10
        staged = RunLayout(c.volumes[0], run).staging_dir / "step_00000010"
        staged.mkdir(parents=True)
        (staged / "mock_state.json").write_text(
            json.dumps({"step": 10, "loss": 1.0, "run_id": run, "epoch": 0})
        )
        (staged / "weights.bin").write_bytes(b"w" * 4096)
        write_complete(staged, 10)

        w = c.spawn_worker(run, volume=c.volumes[0], extra_env=extra)
        w_events = w.volume / "runs" / run / "events.jsonl"
        deadline = time.monotonic() + 30
        while not any(e["event"] == "checkpoint_synced" and e["epoch"] == 2 for e in read_jsonl(w_events)):
            assert time.monotonic() < deadline and w.poll() is None, w.output()[-2000:]
            time.sleep(0.02)
        mine = [e for e in read_jsonl(w_events) if e["epoch"] == 2]
        resumed = next(e for e in mine if e["event"] == "resumed")
        assert (resumed["source"], resumed["step"]) == ("remote", handed_on), resumed
        assert any(e["event"] == "checkpoint_committed" and e["step"] == 10 for e in mine)  # kept, not lost
        pushed = [e["step"] for e in mine if e["event"] == "checkpoint_synced"]
        assert min(pushed) > handed_on, f"pushed {pushed} after resuming at {handed_on}"
        state = json.loads((c.remote_dir / run / "relay" / "state.json").read_text())
        assert state["step"] > handed_on and state["epoch"] == 2, state
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(30) == 0, w.output()[-2000:]
