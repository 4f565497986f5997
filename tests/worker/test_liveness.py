"""relay.worker.liveness: what shows a trainer alive, and which step is shown, for every kind of trainer."""

from __future__ import annotations

import json
from pathlib import Path

from relay.worker.liveness import Liveness
from relay.worker.progress import RunProgress
from relay.worker.progress_tail import ProgressTail
from relay.worker.trainer_log import TrainerLog
from relay_testkit.fake_megatron import log_line


def parts(tmp_path: Path, mode: str) -> tuple[Liveness, Path, TrainerLog, RunProgress]:
    progress_file = tmp_path / "progress.jsonl"
    tlog = TrainerLog(tmp_path, max_bytes=1 << 20, backups=1)
    run = RunProgress()
    live = Liveness(mode, ProgressTail(progress_file), tlog, run)
    live.trainer_started()
    return live, progress_file, tlog, run


def append(path: Path, **line: object) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def test_progress_lines_are_the_evidence_and_heartbeats_keep_the_metrics(tmp_path: Path) -> None:
    live, progress, tlog, _ = parts(tmp_path, "auto")
    assert not live.poll().alive
    append(progress, step=3, ts=1.0, epoch=1, loss=0.5)
    seen = live.poll()
    assert seen.alive and seen.step == 3 and seen.metrics == {"loss": 0.5}
    append(progress, step=3, ts=2.0, epoch=1, heartbeat=True)  # saving: alive, no new step, no metrics
    seen = live.poll()
    assert seen.alive and seen.step == 3 and seen.metrics is None
    tlog.add("stdout", "a chatty trainer that is stuck")  # after its first progress line, output is no proof
    assert not live.poll().alive
    tlog.note("a worker note")
    assert not live.poll().alive


def test_a_trainer_with_no_progress_file_lives_by_its_output_and_its_log_steps(tmp_path: Path) -> None:
    live, _, tlog, run = parts(tmp_path, "auto")
    tlog.add("stderr", "loading the model...")
    seen = live.poll()
    assert seen.alive and seen.step is None  # alive; no step named yet
    tlog.add("stdout", log_line(7, 100, lr=1e-4, loss=2.5, grad_norm=1.0, ms=900.0))
    seen = live.poll()
    assert (
        seen.alive
        and seen.step == 7
        and seen.metrics["loss"] == 2.5
        and seen.metrics["learning_rate"] == 1e-4
    )
    tlog.note("worker notes are not the trainer's output")
    assert not live.poll().alive  # silence: the watchdog's clock runs on
    run.trained(7)
    run.committed(10, "/vol/ckpt/step_00000010")  # a new checkpoint is life too, and a step when it is newer
    seen = live.poll()
    assert seen.alive and seen.step == 10
    assert not live.poll().alive


def test_progress_only_and_any(tmp_path: Path) -> None:
    strict, _, tlog, run = parts(tmp_path / "p", "progress")
    tlog.add("stdout", "output")
    run.committed(5, "/x")
    assert not strict.poll().alive
    loose, progress, tlog2, _ = parts(tmp_path / "a", "any")
    append(progress, step=1, ts=1.0, epoch=1)
    assert loose.poll().step == 1
    tlog2.add("stdout", "still printing")
    assert loose.poll().alive  # any: output counts even after progress lines


def test_a_new_trainer_is_judged_on_its_own_lines(tmp_path: Path) -> None:
    live, progress, tlog, _ = parts(tmp_path, "auto")
    append(progress, step=1, ts=1.0, epoch=1)
    assert live.poll().alive
    live.trainer_started()  # a restart: until its own first progress line, its output counts again
    tlog.add("stdout", "starting again")
    assert live.poll().alive
