"""The timeline reads what a pod's volume records; torn or odd lines must neither crash it nor count."""

from __future__ import annotations

import io
import json
from pathlib import Path

from relay.demo.timeline import PodWatcher, Timeline


def append(path: Path, *records: object, raw: str = "") -> None:
    with path.open("a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
        fh.write(raw)


def test_pod_watcher_collects_facts_and_survives_torn_lines(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "demo-sft"
    run.mkdir(parents=True)
    events, progress, log = run / "events.jsonl", run / "progress.jsonl", tmp_path / "worker.log"
    log.write_text("2026 relay-worker[pod-b] INFO run demo-sft is held by pod-a; retrying\n")
    w = PodWatcher("pod-b", run, loss_every=5, worker_log=log)
    assert [t for _, t in w.poll()] == ["asked for the lease: held by pod-a; retrying until it is released"]

    append(
        events,
        {"ts": 1.0, "event": "acquired", "run_id": "demo-sft", "epoch": 2},  # no ttl_s
        {
            "ts": 1.1,
            "event": "resumed",
            "epoch": 2,
            "step": 15,
            "source": "remote",
            "bytes": 5e5,
            "download_s": 0.1,
        },
        {"ts": 1.2, "event": "trainer_started", "epoch": 2, "pid": 4242, "resume_step": 15},
        raw='{"ts": 1.3, "event": "checkpoint_comm',  # torn: the rest arrives later
    )
    append(progress, {"step": 16, "ts": 2.0, "epoch": 2, "loss": 1.3}, {"step": 17, "ts": 2.1, "epoch": 2})
    append(progress, raw="not json\n")
    texts = [t for _, t in w.poll()]
    assert texts[0] == "acquired the lease on run demo-sft at epoch 2"
    assert "pulled checkpoint step 15 from the remote" in texts[1]
    assert "resuming from step 15" in texts[2]
    assert "step  16  loss 1.300" in texts[3] and "first step of this trainer" in texts[3]
    assert len(texts) == 4  # step 17 is not a multiple of 5; the torn event is not read yet

    append(events, raw='itted", "epoch": 2, "step": 20, "bytes": 1000}\n')
    append(events, {"ts": 3.0, "event": "completed", "epoch": 2, "message": "done", "released": True})
    texts = [t for _, t in w.poll()]
    assert texts == [
        "checkpoint step 20 committed on its volume (0.0 MB, manifest + atomic rename)",
        "released the lease as completed: done",
    ]
    f = w.facts
    assert (f.epochs, f.resume_step, f.resume_source, f.trainer_pids) == ([2], 15, "remote", [4242])
    assert (f.committed, f.first_step, f.last_step, f.losses[17]) == ([20], 16, 17, None)
    assert (f.outcome, f.outcome_message) == ("completed", "done")


def test_timeline_lines_are_timed_from_the_start() -> None:
    out = io.StringIO()
    tl = Timeline(out, t0=100.0)
    tl.say("pod-a", "hello", ts=112.34)
    tl.say("demo", "early", ts=99.0)
    assert out.getvalue().splitlines() == ["[  12.3s] pod-a     hello", "[   0.0s] demo      early"]
