"""Corrupt checkpoints on the volume and on the remote: a worker skips each one with its reason, resumes
from the newest that verifies, keeps the bad ones for forensics (quarantined, not deleted), never commits
a half-written one, and finishes the run with the right final step."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from relay.ckpt.layout import COMMITTED_RE, RunLayout, committed_step_dirs
from relay.ckpt.verify import verify_checkpoint
from relay_testkit.chaos_cluster import ChaosCluster, ChaosSettings, WorkerHandle, read_jsonl
from relay_testkit.wait import wait_for

TRAIN = {"max_steps": 60, "save_steps": 5, "step_seconds": 0.06, "checkpoint_bytes": 4096}


def events(w: WorkerHandle, run_id: str) -> list[dict]:
    return read_jsonl(w.volume / "runs" / run_id / "events.jsonl")


def preempt_after(w: WorkerHandle, run_id: str, event: str, count: int) -> None:
    """SIGTERM ``w`` once it logged ``event`` for ``count`` different steps; wait for its clean exit."""
    wait_for(
        lambda: len({e["step"] for e in events(w, run_id) if e["event"] == event}) >= count,
        30,
        f"{count} x {event}",
    )
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0, w.output()[-2000:]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def env(**extra: str) -> dict[str, str]:
    return {"TRAIN": json.dumps(TRAIN), "CKPT_KEEP_LAST_N": "20", "REMOTE_KEEP_LAST_N": "20", **extra}


def test_corrupt_local_checkpoints_are_skipped_with_reasons_and_kept(tmp_path: Path) -> None:
    run = "corrupt-local"
    with ChaosCluster(tmp_path, ChaosSettings(volumes=1)) as c:
        first = c.spawn_worker(run, extra_env=env(RELAY_REMOTE=""))
        preempt_after(first, run, "checkpoint_committed", 7)
        layout = RunLayout(first.volume, run)
        dirs = [p for _, p in committed_step_dirs(layout)]  # newest first
        assert len(dirs) >= 7, dirs
        flip_byte(dirs[0] / "weights.bin")  # same size, wrong bytes
        (dirs[1] / "weights.bin").write_bytes((dirs[1] / "weights.bin").read_bytes()[:100])  # truncated
        (dirs[2] / "manifest.json").write_text("{not json")  # unreadable manifest
        (dirs[3] / "manifest.json").unlink()  # no manifest
        (dirs[4] / "evil.bin").write_bytes(b"planted")  # a file the manifest does not list
        good = int(COMMITTED_RE.match(dirs[5].name).group(1))  # type: ignore[union-attr]
        half = layout.staging_dir / "step_00000099"  # a checkpoint still being written: no COMPLETE
        half.mkdir(parents=True)
        (half / "weights.bin").write_bytes(b"partial")
        corrupted = {d.name: sorted(f.name for f in d.iterdir()) for d in dirs[:5]}

        second = c.spawn_worker(run, volume=first.volume, extra_env=env(RELAY_REMOTE=""))
        assert second.proc.wait(60) == 0, second.output()[-3000:]
        resumed = next(
            e for e in events(second, run) if e["event"] == "resumed" and e["worker_id"] == second.worker_id
        )
        assert (resumed["source"], resumed["step"]) == ("local", good), resumed
        log = second.output()
        for reason in ("sha256 does not match", "truncated", "manifest", "file not in manifest: evil.bin"):
            assert reason in log, reason
        assert log.count("skipping checkpoint") >= 5, log
        # nothing lost: every bad checkpoint is kept, byte for byte, in quarantine
        quarantined = {
            p.name.split(".")[0]: sorted(f.name for f in p.iterdir()) for p in layout.quarantine_dir.iterdir()
        }
        assert quarantined == corrupted, (quarantined, corrupted)
        # the half-written one was never committed nor resumed from
        assert not layout.step_dir(99).exists()
        starts = [r for r in read_jsonl(second.mock_log) if r["event"] == "start"]
        assert [r["step"] for r in starts] == [good]
        detail = c.api(f"/api/runs/{run}")
        assert (detail["status"], detail["step"], detail["latest_checkpoint"]["step"]) == (
            "completed",
            60,
            60,
        ), detail


def test_corrupt_remote_checkpoints_are_skipped_and_the_newest_good_one_is_pulled(tmp_path: Path) -> None:
    run = "corrupt-remote"
    with ChaosCluster(tmp_path, ChaosSettings(volumes=2)) as c:
        first = c.spawn_worker(run, extra_env=env())
        preempt_after(first, run, "checkpoint_synced", 4)
        remote_ckpts = sorted((c.remote_dir / run / "checkpoints").iterdir(), reverse=True)
        assert len(remote_ckpts) >= 4, remote_ckpts
        flip_byte(remote_ckpts[0] / "weights.bin")  # the one relay/state.json names: its bytes rot
        (remote_ckpts[1] / "manifest.json").write_text('{"format_version": 1, "run_id": "corrupt-remote"')
        good = int(COMMITTED_RE.match(remote_ckpts[2].name).group(1))  # type: ignore[union-attr]
        local_before = {p.name for _, p in committed_step_dirs(RunLayout(first.volume, run))}

        second = c.spawn_worker(run, volume=c.volumes[1], extra_env=env())  # another machine: empty volume
        assert second.proc.wait(60) == 0, second.output()[-3000:]
        resumed = next(
            e for e in events(second, run) if e["event"] == "resumed" and e["worker_id"] == second.worker_id
        )
        assert (resumed["source"], resumed["step"]) == ("remote", good), resumed
        # the resumed event says which remote checkpoints were passed over, and why
        skipped = resumed["remote_skipped"]
        assert len(skipped) == 2 and remote_ckpts[0].name in skipped[0] and "hash_mismatch" in skipped[0], (
            skipped
        )
        assert remote_ckpts[1].name in skipped[1] and "bad_manifest" in skipped[1], skipped
        log = second.output()
        assert f"skipping file://{c.remote_dir} {run}/checkpoints/{remote_ckpts[0].name}" in log, log
        assert f"{run}/checkpoints/{remote_ckpts[1].name}" in log and "does not verify" in log, log
        # nothing bad was installed on the new volume: everything committed there verifies
        for _, path in committed_step_dirs(RunLayout(c.volumes[1], run)):
            assert verify_checkpoint(path).ok, path
        # the first pod's own copies are untouched, and the run finished
        assert {p.name for _, p in committed_step_dirs(RunLayout(first.volume, run))} == local_before
        detail = c.api(f"/api/runs/{run}")
        assert (detail["status"], detail["step"]) == ("completed", 60), detail
        state = json.loads((c.remote_dir / run / "relay" / "state.json").read_text())
        assert (state["step"], state["epoch"]) == (60, 2)


def test_an_unreadable_remote_state_fails_the_run_clearly_and_touches_nothing(tmp_path: Path) -> None:
    """With relay/state.json unreadable the worker cannot tell which epoch owns the remote: it refuses to
    guess (no pull of unverified bytes, no push that could overwrite), releases the run as failed naming
    the file, and leaves every checkpoint where it was."""
    run = "bad-state"
    with ChaosCluster(tmp_path, ChaosSettings(volumes=2)) as c:
        first = c.spawn_worker(run, extra_env=env())
        preempt_after(first, run, "checkpoint_synced", 2)
        state = c.remote_dir / run / "relay" / "state.json"
        state.write_text("{garbage")
        before = sorted(
            str(p.relative_to(c.remote_dir)) for p in (c.remote_dir / run / "checkpoints").rglob("*")
        )

        second = c.spawn_worker(run, volume=c.volumes[1], extra_env=env())
        assert second.proc.wait(60) == 4, second.output()[-3000:]
        line = second.output().strip().splitlines()[-1]
        assert (
            line.startswith("relay worker: run bad-state failed") and "state.json is not valid JSON" in line
        ), line
        detail = c.api(f"/api/runs/{run}")
        assert detail["status"] == "failed" and "state.json" in detail["detail"], detail
        assert state.read_text() == "{garbage"
        after = sorted(
            str(p.relative_to(c.remote_dir)) for p in (c.remote_dir / run / "checkpoints").rglob("*")
        )
        assert after == before
        assert not read_jsonl(second.mock_log)  # no trainer ever started
