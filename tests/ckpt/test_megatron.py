"""Megatron-style staged checkpoints: iter_N complete once the tracker names N; committed in the shape
Megatron's ``--load`` reads; a reshape interrupted by a kill is finished before anything is committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.ckpt import RunLayout, commit_newest_staged, find_complete_staged, verify_checkpoint
from relay.ckpt.megatron import TRACKER_NAME, WRAP_PREFIX, finish_wraps, read_tracker
from tests.ckpt.util import stage_checkpoint


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    lay = RunLayout(tmp_path / "relay", "run1")
    lay.ensure()
    return lay


def stage_iter(layout: RunLayout, iteration: int) -> Path:
    return stage_checkpoint(
        layout,
        0,
        {"mp_rank_00/model_optim_rng.pt": f"state {iteration}".encode()},
        name=f"iter_{iteration:07d}",
        marker=False,
    )


def test_iter_dir_is_complete_when_the_tracker_names_it(layout: RunLayout) -> None:
    s = layout.staging_dir
    stage_iter(layout, 100)
    stage_iter(layout, 200)  # still being written by some rank: the tracker still says 100
    assert find_complete_staged(s) == []  # no tracker yet
    (s / TRACKER_NAME).write_text("100")
    assert [(c.path.name, c.step, c.format, c.marker) for c in find_complete_staged(s)] == [
        ("iter_0000100", 100, "megatron", TRACKER_NAME)
    ]
    (s / TRACKER_NAME).write_text("release")  # a converted checkpoint, not a training step
    assert find_complete_staged(s) == [] and read_tracker(s) is None
    (s / TRACKER_NAME).write_text("")  # torn write (Megatron opens it with "w")
    assert find_complete_staged(s) == []


def test_commit_gives_the_shape_megatron_load_reads(layout: RunLayout) -> None:
    s = layout.staging_dir
    stage_iter(layout, 100)
    (s / TRACKER_NAME).write_text("100")
    committed = commit_newest_staged(layout, epoch=3, keep_last_n=2)
    assert committed is not None and committed.step == 100
    d = layout.step_dir(100)
    assert (d / TRACKER_NAME).read_text() == "100"
    assert (d / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt").read_bytes() == b"state 100"
    assert verify_checkpoint(d, expected_run_id="run1").ok
    manifest = json.loads((d / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == {
        TRACKER_NAME,
        "COMPLETE",
        "iter_0000100/mp_rank_00/model_optim_rng.pt",
    }
    assert not (s / "iter_0000100").exists() and read_tracker(s) == 100  # Megatron's tracker stays
    # Megatron goes on saving into the same directory: the next iteration commits the same way
    stage_iter(layout, 200)
    (s / TRACKER_NAME).write_text("200")
    assert commit_newest_staged(layout, epoch=3, keep_last_n=2).step == 200
    assert (layout.step_dir(200) / TRACKER_NAME).read_text() == "200"
    assert commit_newest_staged(layout, epoch=3, keep_last_n=2) is None  # the tracker names a committed one


def test_a_reshape_killed_half_way_is_finished(layout: RunLayout) -> None:
    s = layout.staging_dir
    wrap = s / f"{WRAP_PREFIX}iter_0000300"
    wrap.mkdir()
    (wrap / TRACKER_NAME).write_text("300")
    (wrap / "iter_0000300").mkdir()  # the iter dir was moved in, then the worker was killed
    (wrap / "iter_0000300" / "w.pt").write_bytes(b"w")
    assert find_complete_staged(s) == []  # hidden from the scan...
    committed = commit_newest_staged(layout, epoch=1, keep_last_n=2)  # ...and finished before any commit
    assert committed is not None and committed.step == 300
    assert (layout.step_dir(300) / "iter_0000300" / "w.pt").read_bytes() == b"w"
    assert not wrap.exists()
    half = s / f"{WRAP_PREFIX}iter_0000400"  # killed before the iter dir moved: nothing to finish
    half.mkdir()
    assert finish_wraps(s) == [] and half.exists()
