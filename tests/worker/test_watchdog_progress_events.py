"""Watchdog rules, the progress tail and the events file: pure logic, no processes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from relay.backoff import Backoff
from relay.worker import progress_tail as progress
from relay.worker.events import EventLog, read_events
from relay.worker.progress_tail import ProgressTail, parse_line
from relay.worker.watchdog import RestartPolicy, Verdict, Watchdog, classify_exit, detect_oom
from relay_testkit.leases import make_lease


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
    p = RestartPolicy(3, Backoff(1.0, 3.0, jitter=0.0))
    assert [p.next_delay(), p.next_delay(), p.next_delay(), p.next_delay()] == [1.0, 2.0, 3.0, None]
    assert RestartPolicy(0, Backoff(1, 1, jitter=0.0)).next_delay() is None


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
    ev = EventLog(path, make_lease(epoch=4))
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


@pytest.mark.parametrize(
    "step",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e30",
        "1e400",
        "-1",
        "2.5",
        str(2**63),
        "9" * 400,
        "true",
        '"7"',
        "null",
    ],
)
def test_progress_lines_with_an_impossible_step_are_skipped(
    step: str, caplog: pytest.LogCaptureFixture
) -> None:
    progress._warned.clear()
    caplog.set_level(logging.WARNING, logger="relay.worker.progress")
    line = '{"step": ' + step + ', "ts": 1.5, "loss": 0.5}'
    assert parse_line(line) is None
    assert parse_line(line.encode()) is None
    warnings = [r for r in caplog.records if "progress line skipped" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per line


def test_progress_step_bounds_and_hostile_numbers_elsewhere() -> None:
    assert parse_line('{"step": 9223372036854775807, "ts": 1}').step == 2**63 - 1  # type: ignore[union-attr]
    assert parse_line('{"step": 12.0, "ts": 1}').step == 12  # type: ignore[union-attr]
    line = parse_line('{"step": 3, "ts": 1e999, "big": ' + "9" * 400 + ', "nan": NaN, "ok": 2}')
    assert line is not None and line.step == 3 and line.metrics == {"ok": 2.0}
    assert line.ts != float("inf")  # a non-finite ts falls back to now


def test_progress_tail_skips_bad_steps_and_keeps_going(tmp_path: Path) -> None:
    f = tmp_path / "progress.jsonl"
    f.write_text('{"step": 1e30}\n{"step": NaN}\n{"step": -4}\n{"step": 2, "ts": 1}\n')
    tail = ProgressTail(f, from_end=False)
    assert [p.step for p in tail.poll()] == [2]


def test_exit_code_2_is_not_restartable() -> None:
    report = classify_exit(2, ["train.model: required"])
    assert not report.restartable
    assert report.reason == "configuration or data error (exit code 2): restarting cannot help"
    for rc in (1, 3, 137, -9, None):
        assert classify_exit(rc, []).restartable, rc
    assert classify_exit(0, []).restartable
