"""A worker cut off from the commander (its traffic goes through a proxy the test cuts) fences itself within
the TTL: its trainer is dead before anyone else may be granted the run. Once another worker holds the
run, the cut-off worker's late reports and renewals are refused (409) and its late push to the remote is
refused by epoch (RemoteFencedError): nothing it does can overwrite the new holder's work."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from relay.ckpt.layout import RunLayout
from relay.ckpt.verify import latest_committed
from relay.client import CommanderClient, Fenced
from relay.remote import RemoteFencedError, open_remote
from relay.schema import ReleaseRequest, RenewRequest, ReportRequest
from relay_testkit.chaos_checks import check_artifacts
from relay_testkit.chaos_cluster import ChaosCluster, ChaosSettings, pid_alive, read_jsonl
from relay_testkit.wait import wait_for

RUN = "run-000"


def first(events: list[dict], name: str, **match: object) -> dict | None:
    return next(
        (e for e in events if e["event"] == name and all(e.get(k) == v for k, v in match.items())), None
    )


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
def test_cut_off_worker_fences_itself_and_its_late_writes_are_refused(tmp_path: Path, mode: str) -> None:
    s = ChaosSettings(
        runs=1,
        ttl_s=3.0,
        safety_margin_s=1.0,
        kill_grace_s=0.5,
        max_steps=150,
        save_steps=10,
        step_seconds=0.03,
        slow_checkpoint_s=0.0,
    )
    with ChaosCluster(tmp_path, s) as c:
        # the trainer ignores SIGTERM: the fence must still get it killed (SIGKILL after kill_grace_s)
        a = c.spawn_worker(
            RUN, via_proxy=True, extra_env={"TRAIN": json.dumps({**s.train_block(), "ignore_sigterm": True})}
        )
        a_events = a.volume / "runs" / RUN / "events.jsonl"
        wait_for(lambda: first(read_jsonl(a_events), "checkpoint_synced"), 30, "A to sync a checkpoint")
        grant_a = first(read_jsonl(a_events), "acquired")
        assert grant_a is not None and grant_a["epoch"] == 1
        trainer_a = c.watcher.alive_of(a.worker_id)[0]

        assert a.proxy is not None
        a.proxy.cut(mode)
        cut_at = time.time()
        b = c.spawn_worker(RUN)  # another pod, straight to the commander, waiting for the run
        b_events = b.volume / "runs" / RUN / "events.jsonl"

        fenced = wait_for(lambda: first(read_jsonl(a_events), "fenced"), s.ttl_s + 3, "A to fence itself")
        assert isinstance(fenced, dict)
        assert wait_for(lambda: a.poll() is not None, 10, "A to exit") and a.exit_code == 3, a.output()[
            -2000:
        ]
        assert "no successful lease renewal" in fenced["message"]
        # it fenced itself about ttl - margin after its last renewal, which was before the cut
        assert fenced["ts"] - cut_at < s.ttl_s + 1.0, fenced["ts"] - cut_at
        wait_for(lambda: not pid_alive(trainer_a.pid, trainer_a.starttime), 5, "A's trainer to die")
        assert "FENCED" in a.output()

        grant_b = wait_for(lambda: first(read_jsonl(b_events), "acquired"), 20, "B to acquire the run")
        assert isinstance(grant_b, dict) and grant_b["epoch"] == 2
        # the promise itself: A's trainer (which ignored SIGTERM) was seen dead before B was granted the run
        dead_at = next(t.death_ts for t in c.watcher.snapshot() if t.pid == trainer_a.pid)
        assert dead_at is not None and dead_at < grant_b["ts"], (dead_at, grant_b["ts"])
        wait_for(
            lambda: first(read_jsonl(b_events), "checkpoint_synced", epoch=2), 20, "B to sync a checkpoint"
        )

        # A's late traffic, exactly as A would send it (its lease id and epoch), through the healed link
        a.proxy.heal()

        async def late_calls() -> list[str]:
            refused = []
            async with CommanderClient(a.proxy.url, s.secret) as client:  # type: ignore[union-attr]
                lease = {"worker_id": a.worker_id, "lease_id": grant_a["lease_id"], "epoch": 1}
                for call in (
                    lambda: client.report(
                        RUN, ReportRequest(**lease, step=10**6, event="checkpoint_committed", message="late")
                    ),
                    lambda: client.renew(RenewRequest(run_id=RUN, **lease)),
                    lambda: client.release(ReleaseRequest(run_id=RUN, **lease, outcome="completed")),
                ):
                    with pytest.raises(Fenced) as exc:
                        await call()
                    refused.append(str(exc.value))
            return refused

        refused = asyncio.run(late_calls())
        assert len(refused) == 3 and all(r for r in refused)
        detail = c.api(f"/api/runs/{RUN}?events=1000")
        assert detail["holder"] == b.worker_id and detail["epoch"] == 2 and detail["status"] == "running"
        assert detail["step"] != 10**6 and not any(e.get("message") == "late" for e in detail["events"])

        # A's late push of its newest checkpoint, with its old epoch, is refused by the remote
        remote = open_remote(f"file://{c.remote_dir}", RUN)
        before = remote.state()
        ckpt_a = latest_committed(RunLayout(a.volume, RUN))
        assert ckpt_a is not None and before is not None and before.epoch == 2
        with pytest.raises(RemoteFencedError):
            remote.push(ckpt_a, epoch=1)
        after = remote.state()
        assert after is not None and (after.epoch, after.step, after.manifest_sha256) == (
            before.epoch,
            before.step,
            before.manifest_sha256,
        )

        wait_for(lambda: b.poll() is not None, 60, "B to complete the run")
        assert b.exit_code == 0, b.output()[-2000:]
        art = c.artifacts([RUN])
    report = check_artifacts(art)
    assert not report.violations, report.summary()
    assert report.ends["fenced"] == 1 and report.ends["completed"] == 1, report.summary()
