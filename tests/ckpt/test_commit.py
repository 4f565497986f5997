import hashlib
import json
import os
from pathlib import Path

import pytest

from relay.ckpt import (
    CheckpointError,
    InvalidStagedCheckpoint,
    RunLayout,
    StaleStagedCheckpoint,
    commit_checkpoint,
    commit_newest_staged,
    find_complete_staged,
    prune_local,
    read_latest_step,
    read_manifest,
    verify_checkpoint,
)
from relay.ckpt import commit as commit_mod
from tests.ckpt.util import make_committed, run_py, stage_checkpoint


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    lay = RunLayout(tmp_path / "relay", "run1")
    lay.ensure()
    return lay


def test_staged_completeness_rules(layout: RunLayout) -> None:
    s = layout.staging_dir
    stage_checkpoint(layout, 5)  # step_5 + COMPLETE
    stage_checkpoint(layout, 0, name="step_7", marker_step=70)  # marker JSON wins over the name
    stage_checkpoint(layout, 9, marker=False)  # still being written
    hf = stage_checkpoint(layout, 0, {"model.bin": b"w"}, name="checkpoint-300", marker=False)
    (hf / "trainer_state.json").write_text('{"global_step": 300}')
    torn = stage_checkpoint(layout, 0, {"model.bin": b"w"}, name="checkpoint-400", marker=False)
    (torn / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    stage_checkpoint(layout, 0, {"mp_rank_00_model_states.pt": b"x"}, name="global_step500", marker=False)
    stage_checkpoint(layout, 0, {"mp_rank_00_model_states.pt": b"x"}, name="global_step600", marker=False)
    (s / "latest").write_text("global_step500\n")  # DeepSpeed: 600 is not published yet
    (s / "runs").mkdir()  # unrelated trainer output
    os.symlink(layout.staging_dir / "step_5", s / "step_8")  # symlinked dirs are never committed

    found = {(c.path.name, c.step, c.format, c.marker) for c in find_complete_staged(s)}
    assert found == {
        ("step_5", 5, "relay", "COMPLETE"),
        ("step_7", 70, "relay", "COMPLETE"),
        ("checkpoint-300", 300, "hf", "trainer_state.json"),
        ("global_step500", 500, "deepspeed", "latest"),
    }
    assert [c.step for c in find_complete_staged(s)] == [5, 70, 300, 500]
    assert find_complete_staged(layout.staging_dir / "missing") == []


def test_commit_writes_manifest_renames_and_points_latest(layout: RunLayout) -> None:
    files = {"a.bin": os.urandom(3000), "sub/dir/b.bin": b"hello", "empty": b""}
    staged = stage_checkpoint(layout, 12, files)
    [s] = find_complete_staged(layout.staging_dir)
    ckpt = commit_checkpoint(layout, s, epoch=4, keep_last_n=3)

    assert not staged.exists()
    assert ckpt.path == layout.step_dir(12) and ckpt.step == 12 and ckpt.epoch == 4
    assert os.readlink(layout.latest_link) == "step_00000012"  # relative: survives a remount
    manifest, data = read_manifest(ckpt.path)
    assert hashlib.sha256(data).hexdigest() == ckpt.manifest_sha256
    assert (manifest.run_id, manifest.step, manifest.epoch, manifest.format_version) == ("run1", 12, 4, 1)
    assert manifest.created_at.endswith("Z")
    got = {f.path: (f.size, f.sha256) for f in manifest.files}
    files["COMPLETE"] = b""
    assert got == {k: (len(v), hashlib.sha256(v).hexdigest()) for k, v in files.items()}
    assert ckpt.total_bytes == sum(len(v) for v in files.values())
    assert verify_checkpoint(ckpt.path).ok


def test_prune_keeps_newest_n_and_latest(layout: RunLayout) -> None:
    for step in (1, 2, 3, 4):
        make_committed(layout, step, {"w": b"x" * step}, keep_last_n=2)
    assert sorted(p.name for p in layout.ckpt_dir.glob("step_*")) == ["step_00000003", "step_00000004"]
    assert read_latest_step(layout) == 4
    assert not any(layout.trash_dir.iterdir())
    # keep_last_n below 1 still keeps the newest
    assert prune_local(layout, 0) == [3]
    assert [p.name for p in layout.ckpt_dir.glob("step_*")] == ["step_00000004"]


def test_staged_not_newer_than_committed_is_discarded(layout: RunLayout) -> None:
    make_committed(layout, 20)
    for step in (10, 20):
        stage_checkpoint(layout, step)
        [s] = find_complete_staged(layout.staging_dir)
        with pytest.raises(StaleStagedCheckpoint) as info:
            commit_checkpoint(layout, s, epoch=1, keep_last_n=3)
        assert f"step {step}" in str(info.value) and "committed step 20" in str(info.value)
        assert not s.path.exists()
    assert read_latest_step(layout) == 20


def test_commit_newest_staged_discards_older_complete_ones(layout: RunLayout) -> None:
    for step in (3, 6, 9):
        stage_checkpoint(layout, step)
    ckpt = commit_newest_staged(layout, epoch=1, keep_last_n=5)
    assert ckpt is not None and ckpt.step == 9
    assert list(layout.staging_dir.iterdir()) == []
    assert [p.name for p in layout.ckpt_dir.glob("step_*")] == ["step_00000009"]
    assert commit_newest_staged(layout, epoch=1, keep_last_n=5) is None


def test_symlink_inside_staged_is_rejected_not_followed(layout: RunLayout, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship")
    d = stage_checkpoint(layout, 5)
    os.symlink(secret, d / "weights.bin")
    [s] = find_complete_staged(layout.staging_dir)
    with pytest.raises(InvalidStagedCheckpoint) as info:
        commit_checkpoint(layout, s, epoch=1, keep_last_n=2)
    assert "symlink" in str(info.value)
    assert not d.exists() and len(list(layout.rejected_dir.iterdir())) == 1
    assert read_latest_step(layout) is None


@pytest.mark.parametrize(
    ("name", "marker"),
    [
        ("step_99999999999999999999999", None),  # the name's step does not fit in an int64
        ("checkpoint-99999999999999999999999", None),
        ("step_5", "1e30"),  # the marker names a step no int64 can hold
        ("step_5", "NaN"),
        ("step_5", "Infinity"),
        ("step_5", "-3"),
        ("step_5", "2.5"),
        ("step_5", '"5"'),
        ("step_5", str(2**63)),
    ],
)
def test_staged_dirs_with_an_impossible_step_are_rejected_never_committed(
    layout: RunLayout, name: str, marker: str | None
) -> None:
    good = stage_checkpoint(layout, 3)
    bad = stage_checkpoint(layout, 0, name=name, marker=False)
    (bad / "COMPLETE").write_text("" if marker is None else '{"step": ' + marker + "}")
    assert [s.path for s in find_complete_staged(layout.staging_dir)] == [good]
    ckpt = commit_newest_staged(layout, epoch=1, keep_last_n=5)
    assert ckpt is not None and ckpt.step == 3  # the valid one is not held up by the bad one
    assert not bad.exists() and read_latest_step(layout) == 3
    [parked] = [p for p in layout.rejected_dir.iterdir() if p.is_dir()]
    assert parked.name.startswith(name + ".") and (parked / "COMPLETE").exists()
    reason = parked.with_name(parked.name + ".reason").read_text()
    assert "0..9223372036854775807" in reason or "larger than" in reason, reason
    assert [p.name for p in layout.ckpt_dir.glob("step_*")] == ["step_00000003"]


def test_commit_checkpoint_refuses_an_out_of_range_step(layout: RunLayout) -> None:
    from relay.ckpt.commit import StagedCheckpoint

    d = stage_checkpoint(layout, 5)
    with pytest.raises(InvalidStagedCheckpoint, match="not an integer in 0.."):
        commit_checkpoint(layout, StagedCheckpoint(d, 2**63, "relay"), epoch=1, keep_last_n=2)
    assert not d.exists() and read_latest_step(layout) is None


def test_an_integral_float_marker_step_is_that_step(layout: RunLayout) -> None:
    stage_checkpoint(layout, 0, name="step_1", marker=False)
    (layout.staging_dir / "step_1" / "COMPLETE").write_text('{"step": 40.0}')
    assert [s.step for s in find_complete_staged(layout.staging_dir)] == [40]


def test_foreign_manifest_json_is_refused(layout: RunLayout) -> None:
    stage_checkpoint(layout, 5, {"manifest.json": b'{"shards": 2}', "w": b"1"})
    [s] = find_complete_staged(layout.staging_dir)
    with pytest.raises(InvalidStagedCheckpoint, match="reserves"):
        commit_checkpoint(layout, s, epoch=1, keep_last_n=2)


def test_io_failure_is_a_typed_error_and_publishes_nothing(layout: RunLayout, monkeypatch) -> None:
    make_committed(layout, 1)
    staged = stage_checkpoint(layout, 2)
    [s] = find_complete_staged(layout.staging_dir)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(commit_mod.os, "rename", full_disk)
    with pytest.raises(CheckpointError) as info:
        commit_checkpoint(layout, s, epoch=1, keep_last_n=3)
    assert "No space left" in str(info.value) and "nothing was published" in str(info.value)
    monkeypatch.undo()
    assert staged.exists() and read_latest_step(layout) == 1
    assert commit_newest_staged(layout, epoch=1, keep_last_n=3).step == 2


def test_bad_epoch_is_refused(layout: RunLayout) -> None:
    stage_checkpoint(layout, 1)
    [s] = find_complete_staged(layout.staging_dir)
    with pytest.raises(ValueError):
        commit_checkpoint(layout, s, epoch=-1, keep_last_n=1)


CONCURRENT = """
import json, os, sys, time
from pathlib import Path
from relay.ckpt import RunLayout, find_complete_staged, commit_checkpoint
from relay.ckpt import commit as C
root, name, log = sys.argv[1], sys.argv[2], sys.argv[3]
layout = RunLayout(Path(root), "run1")
[staged] = [s for s in find_complete_staged(layout.staging_dir) if s.path.name == name]
def hook(phase):
    if phase == "locked":
        with open(log, "a") as f: f.write(f"start {name}\\n")
        time.sleep(0.3)
    elif phase == "before_prune":
        with open(log, "a") as f: f.write(f"end {name}\\n")
C.PHASE_HOOK = hook
Path(log + "." + name + ".ready").touch()
while not Path(log + ".go").exists():
    time.sleep(0.005)
try:
    c = commit_checkpoint(layout, staged, epoch=1, keep_last_n=5)
    print(json.dumps({"step": c.step, "sha": c.manifest_sha256}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__}))
"""


def test_concurrent_commits_from_two_processes_are_serialized(layout: RunLayout, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from tests.ckpt.util import REPO_ROOT

    stage_checkpoint(layout, 10)
    stage_checkpoint(layout, 20)
    log = tmp_path / "timeline.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(layout.relay_root), name, str(log)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("step_20", "step_10")
    ]
    deadline = time.monotonic() + 30
    while not all(Path(f"{log}.{n}.ready").exists() for n in ("step_10", "step_20")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    Path(f"{log}.go").touch()
    outs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    events = [line.split() for line in log.read_text().splitlines()]
    kinds = [k for k, _name in events]
    # Both commits entered the locked section, and never at the same time: each holds the lock for
    # 0.3 s before its "end", so without the lock the two "start"s would be adjacent.
    assert kinds.count("start") == 2
    assert all(not (a == b == "start") for a, b in zip(kinds, kinds[1:], strict=False)), events
    # whichever order they ran in, the newest is latest and nothing older overwrote it
    assert read_latest_step(layout) == 20
    assert verify_checkpoint(layout.step_dir(20)).ok
    results = {o.get("step") or o.get("error") for o in outs}
    assert 20 in results and (10 in results or "StaleStagedCheckpoint" in results)


def test_same_staged_dir_committed_twice_is_idempotent(layout: RunLayout) -> None:
    stage_checkpoint(layout, 3)
    [s] = find_complete_staged(layout.staging_dir)
    first = commit_checkpoint(layout, s, epoch=1, keep_last_n=2)
    second = commit_checkpoint(layout, s, epoch=1, keep_last_n=2)  # the other process lost the race
    assert first == second


def test_kill_while_trainer_writes_leaves_nothing_committable(layout: RunLayout) -> None:
    make_committed(layout, 1)
    d = layout.staging_dir / "step_2"
    proc = run_py(
        """
        import os, signal, sys
        d = sys.argv[1]
        os.makedirs(d)
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(os.urandom(1 << 20))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        str(d),
    )
    assert proc.returncode == -9
    assert find_complete_staged(layout.staging_dir) == []
    assert commit_newest_staged(layout, epoch=1, keep_last_n=2) is None
    assert read_latest_step(layout) == 1
