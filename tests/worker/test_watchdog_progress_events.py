"""Watchdog rules, the progress tail and the events file: pure logic, no processes."""

from __future__ import annotations

import json
from pathlib import Path

from relay.worker.events import EventLog, read_events
from relay.worker.progress import ProgressTail
from relay.worker.watchdog import RestartPolicy, Verdict, Watchdog, classify_exit, detect_oom


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_hang_uses_startup_allowance_until_first_progress() -> None:
    clock = Clock()
    wd = Watchdog(hang_timeout_s=10, startup_timeout_s=30, clock=clock)
    wd.trainer_started()
    clock.t += 20
    assert wd.check() is None  # still starting up
    clock.t += 11
    assert wd.check() is Verdict.HANG
    wd.trainer_started()
    wd.progress()
    clock.t += 9.9
    assert wd.check() is None
    clock.t += 0.2
    assert wd.check() is Verdict.HANG


def test_runtime_limit_counts_from_first_start() -> None:
    clock = Clock()
    wd = Watchdog(hang_timeout_s=None, max_runtime_s=50, clock=clock)
    wd.trainer_started()
    clock.t += 30
    wd.trainer_started()  # a restart does not reset the session's clock
    clock.t += 25
    assert wd.check() is Verdict.RUNTIME_EXCEEDED


def test_classify_exit_and_oom() -> None:
    assert classify_exit(0, []).ok
    r = classify_exit(1, ["Traceback", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"])
    assert r.oom and "CUDA out of memory" in r.reason
    assert classify_exit(-9, ["x"]).reason == "killed by signal 9"
    assert classify_exit(3, ["boom"]).reason == "exit code 3"
    assert not detect_oom(["all fine"])


def test_restart_policy_backoff_and_budget() -> None:
    p = RestartPolicy(3, 1.0, 3.0)
    assert [p.next_delay(), p.next_delay(), p.next_delay(), p.next_delay()] == [1.0, 2.0, 3.0, None]
    assert RestartPolicy(0, 1, 1).next_delay() is None


def test_progress_tail_incremental_partial_and_truncation(tmp_path: Path) -> None:
    f = tmp_path / "progress.jsonl"
    f.write_text(json.dumps({"step": 1, "ts": 1.0}) + "\n")
    tail = ProgressTail(f)  # from the end: the old line is not progress of this trainer
    assert tail.poll() == []
    with open(f, "a") as fh:
        fh.write(json.dumps({"step": 2, "ts": 2.0, "loss": 0.5, "epoch": 3}) + "\n" + '{"step": 3, "lo')
    lines = tail.poll()
    assert [p.step for p in lines] == [2] and lines[0].metrics == {"loss": 0.5}
    with open(f, "a") as fh:
        fh.write('ss": 0.4}\nnot json\n{"no_step": 1}\n')
    assert [p.step for p in tail.poll()] == [3]
    f.write_text(json.dumps({"step": 1}) + "\n")  # truncated / replaced: start over
    assert [p.step for p in tail.poll()] == [1]
    assert ProgressTail(tmp_path / "missing").poll() == []


def test_events_file_and_pending_queue(tmp_path: Path) -> None:
    path = tmp_path / "run" / "events.jsonl"
    seen = []
    ev = EventLog(path, run_id="r", worker_id="w", epoch=4)
    ev.add_listener(seen.append)
    ev.emit("acquired", ttl_s=3)
    ev.emit("resumed", step=10, source="remote", skipped=None)
    recs = read_events(path)
    assert [r["event"] for r in recs] == ["acquired", "resumed"]
    assert (
        recs[1]["step"] == 10
        and recs[1]["epoch"] == 4
        and recs[1]["worker_id"] == "w"
        and "skipped" not in recs[1]
    )
    assert all(isinstance(r["ts"], float) for r in recs)
    assert len(seen) == 2
    first = ev.take_pending()
    assert first is not None and first["event"] == "acquired"
    ev.ack(first)
    assert ev.pending_count() == 1
    ev.close()
