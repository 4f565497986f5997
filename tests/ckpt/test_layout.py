from pathlib import Path

import pytest

from relay.ckpt import CKPT_DIR_FMT, RunLayout
from relay.ids import InvalidIdError

HOSTILE_IDS = [
    "",
    ".",
    "..",
    "../evil",
    "a/b",
    "/abs",
    "a\x00b",
    "x" * 129,
    "spaces here",
    "ünïcode",
    "a\\b",
    None,
    7,
]


def test_paths_follow_the_documented_layout(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "run-1")
    run = tmp_path / "runs" / "run-1"
    assert layout.run_dir == run
    assert layout.ckpt_dir == run / "ckpt"
    assert layout.staging_dir == run / "ckpt" / "_staging"
    assert layout.incoming_dir == run / "ckpt" / "_incoming"
    assert layout.latest_link == run / "ckpt" / "latest"
    assert layout.logs_dir == run / "logs"
    assert layout.events_file == run / "events.jsonl"
    assert layout.state_file == run / "state.json"
    assert layout.progress_file == run / "progress.jsonl"
    assert layout.train_config_file == run / "train_config.json"
    assert layout.lock_file == run / ".lock"
    assert layout.step_dir(42) == run / "ckpt" / "step_00000042"
    assert CKPT_DIR_FMT % 123456789 == "step_123456789"
    layout.ensure()
    for d in (layout.run_dir, layout.ckpt_dir, layout.staging_dir, layout.incoming_dir, layout.logs_dir):
        assert d.is_dir()


@pytest.mark.parametrize("run_id", HOSTILE_IDS)
def test_hostile_run_ids_are_refused(tmp_path: Path, run_id: object) -> None:
    with pytest.raises(InvalidIdError) as info:
        RunLayout(tmp_path, run_id)  # type: ignore[arg-type]
    assert "run_id" in str(info.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("step", [-1, True, 1.5, "3"])
def test_step_dir_refuses_non_steps(tmp_path: Path, step: object) -> None:
    with pytest.raises(ValueError):
        RunLayout(tmp_path, "r").step_dir(step)  # type: ignore[arg-type]
