"""Checkpoints by wall time (``save_every_s``): the worker asks through the save-request file, the mock
honours it, a trainer that ignores it loses nothing, and ``auto`` picks Young/Daly's interval from the
measured save pause and the run's lease history, shown in ``relayctl status``."""

from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.ctl.status import format_detail
from relay.schema import RunDetail
from relay.worker.cadence import (
    AUTO_MAX_S,
    AUTO_MIN_S,
    Interruptions,
    SaveCostMeter,
    SaveRequestFile,
    choose_interval,
    interruptions,
    young_daly_interval,
)
from relay_testkit.workerproc import WorkerProc, step_counts
from trainer_blackbox.save_request import SaveRequests

# --------------------------------------------------------------------------- the arithmetic


def test_young_daly_is_the_square_root_of_twice_cost_times_mtbf() -> None:
    assert young_daly_interval(8.0, 3600.0) == pytest.approx(240.0)
    assert young_daly_interval(0.0, 100.0) == 0.0
    with pytest.raises(ValueError):
        young_daly_interval(1.0, 0.0)


@dataclass
class L:  # a lease record as the commander's lease history has it
    granted_at: float
    ended_at: float | None
    ended: str


def test_interruptions_count_the_lease_ends_that_cost_work() -> None:
    leases = [
        L(0, 100, "preempted"),
        L(100, 250, "expired"),
        L(250, 300, "completed"),
        L(300, 310, "fenced"),
        L(310, None, "running"),
    ]
    seen = interruptions(leases, now=400)
    assert (seen.count, seen.exposure_s) == (3, 400)
    assert seen.mtbf_s == pytest.approx(400 / 3)
    assert Interruptions(0, 900).mtbf_s == 900  # none yet: the running time counts as one


def test_choose_interval_fixed_unset_and_auto() -> None:
    assert choose_interval(None, 3.0, None).interval_s is None
    assert choose_interval(120.0, None, None).interval_s == 120.0
    pending = choose_interval("auto", None, Interruptions(0, 10))
    assert pending.interval_s is None and "first checkpoint" in pending.why
    auto = choose_interval("auto", 2.0, Interruptions(4, 3600))
    assert auto.interval_s == pytest.approx(math.sqrt(2 * 2.0 * 900))
    assert "Young/Daly" in auto.why and "4 interruption(s)" in auto.why
    assert (auto.save_cost_s, auto.mtbf_s, auto.interruptions) == (2.0, 900.0, 4)
    assert choose_interval("auto", 0.001, Interruptions(9, 10)).interval_s == AUTO_MIN_S
    high = choose_interval("auto", 600.0, Interruptions(0, 10**7))
    assert high.interval_s == AUTO_MAX_S and "clamped" in high.why


def test_auto_never_asks_faster_than_a_save_is_written() -> None:
    """An async save pauses 0.1 s but takes 40 s to write: asking every 13 s would queue saves."""
    quick = choose_interval("auto", 0.1, Interruptions(1, 900), write_s=40.0)
    assert quick.interval_s == pytest.approx(40.0) and quick.write_s == 40.0
    assert "raised to the 40s a save takes to be written" in quick.why
    slow_writes_dont_matter = choose_interval("auto", 2.0, Interruptions(4, 3600), write_s=3.0)
    assert slow_writes_dont_matter.interval_s == pytest.approx(math.sqrt(2 * 2.0 * 900))
    assert "raised" not in slow_writes_dont_matter.why
    capped = choose_interval("auto", 0.1, Interruptions(1, 900), write_s=5000.0)
    assert capped.interval_s == AUTO_MAX_S and "clamped" in capped.why


def test_the_save_cost_is_the_pause_beyond_a_normal_step() -> None:
    meter = SaveCostMeter()
    ts = 0.0
    for step in range(1, 11):  # steps of 1 s; a save after step 5 pauses training 3 s
        ts += 1.0 + (3.0 if step == 6 else 0.0)
        meter.line(step, ts)
        if step == 5:
            assert meter.cost_s is None
            meter.saved(5)  # committed before the next line
    assert meter.cost_s == pytest.approx(3.0)
    meter.saved(10)  # committed after the next line arrived? measured when it does
    meter.line(11, ts + 1.5)
    assert meter.cost_s == pytest.approx((3.0 + 0.5) / 2)


def test_the_write_time_is_the_checkpointed_step_to_its_commit() -> None:
    meter = SaveCostMeter()
    meter.saved(3, at=10.0)  # its step's line never seen: nothing to measure
    assert meter.write_s is None
    meter.line(4, 100.0)
    meter.saved(4, at=107.5)
    meter.line(9, 200.0)
    meter.saved(9, at=204.5)
    meter.line(14, 300.0)
    meter.saved(14, at=306.0)
    assert meter.write_s == pytest.approx(6.0)  # the median of 7.5, 4.5 and 6.0


def test_each_request_is_seen_once_by_the_trainer(tmp_path: Path) -> None:
    worker_side = SaveRequestFile(tmp_path / "save_request.json")
    trainer_side = SaveRequests(tmp_path / "save_request.json")
    assert not trainer_side.pending()  # no file yet
    worker_side.request("save_every_s", 60.0)
    assert trainer_side.pending() and not trainer_side.pending()
    worker_side.request("save_every_s", 60.0)
    assert trainer_side.pending()
    worker_side.clear()
    assert not trainer_side.pending() and not SaveRequests(None).pending()


# --------------------------------------------------------------------------- a worker and the mock


def _run(tmp_path: Path, commander_factory: Any, run_id: str, train: dict, **settings: Any) -> WorkerProc:
    cmd = commander_factory(lease_ttl_s=5.0)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id=run_id,
        worker_id="pod",
        train=train,
        settings=settings,
    ).start()
    assert w.wait(120) == 0, w.output()
    w.cmd_url = cmd.url  # type: ignore[attr-defined]
    return w


def test_the_mock_saves_when_the_worker_asks(tmp_path: Path, commander_factory: Any) -> None:
    train = {"max_steps": 60, "save_steps": 0, "step_seconds": 0.05}  # no saves of its own but the last
    w = _run(tmp_path, commander_factory, "asked", train, save_every_s=0.5)
    requested = [r["step"] for r in w.mock_log() if r["event"] == "save" and r.get("reason") == "request"]
    assert requested, w.output()
    committed = {e["step"] for e in w.events() if e["event"] == "checkpoint_committed"}
    assert set(requested) & committed  # the asked-for saves became checkpoints
    assert step_counts(w.mock_log()) == {s: 1 for s in range(1, 61)}
    cadence = [e for e in w.events() if e["event"] == "save_cadence"]
    assert cadence and cadence[0]["interval_s"] == 0.5


def test_a_trainer_that_ignores_requests_loses_nothing(tmp_path: Path, commander_factory: Any) -> None:
    train = {"max_steps": 40, "save_steps": 0, "step_seconds": 0.05, "save_requests": False}
    w = _run(tmp_path, commander_factory, "ignored", train, save_every_s=0.3)
    saves = [r for r in w.mock_log() if r["event"] == "save"]
    assert [s["step"] for s in saves] == [40]  # only its own final save
    assert w.events()[-1]["event"] == "completed"
    assert step_counts(w.mock_log()) == {s: 1 for s in range(1, 41)}
    assert "asked the trainer for a checkpoint" in (w.run_dir() / "logs" / "trainer.log").read_text()


def test_auto_cadence_is_chosen_from_the_measured_save_and_shown_in_status(
    tmp_path: Path, commander_factory: Any
) -> None:
    train = {"max_steps": 30, "save_steps": 5, "step_seconds": 0.05, "slow_checkpoint_s": 0.4}
    w = _run(tmp_path, commander_factory, "auto", train, save_every_s="auto")
    chosen = [e for e in w.events() if e["event"] == "save_cadence" and e.get("interval_s")]
    assert chosen, [e for e in w.events() if e["event"] == "save_cadence"]
    first = chosen[0]
    assert first["setting"] == "auto" and first["save_cost_s"] > 0 and first["interruptions"] == 0
    assert first["interval_s"] >= 5.0 and "Young/Daly" in first["message"]
    with urllib.request.urlopen(f"{w.cmd_url}/api/runs/auto", timeout=5) as resp:  # type: ignore[attr-defined]
        detail = RunDetail.model_validate(json.loads(resp.read()))
    shown = format_detail(detail)
    assert "save_cadence" in shown and "Young/Daly" in shown
