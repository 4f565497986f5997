"""Warm standby: a pod waiting for a run another pod holds keeps the remote's newest verified checkpoint
on its own volume, follows newer ones fetching only the files it lacks, keeps N, and hands the local
copy to recovery, so the handoff downloads only what changed since."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from relay.ckpt import RunLayout, verify_checkpoint
from relay.ckpt.layout import committed_step_dirs
from relay.ckpt.manifest import read_manifest
from relay.client import CommanderClient
from relay.config import load_config
from relay.remote import open_remote
from relay.worker.standby import Standby, standby_remote
from relay_testkit.wait import until, wait_for
from relay_testkit.workerproc import WorkerProc
from tests.ckpt.util import make_committed


def standby_cfg(root: Path, **env: str):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        env={"COMMANDER_URL": "http://127.0.0.1:9", "RUN_ID": "run1", "RELAY_ROOT": str(root), **env},
    )


def files(step: int, frozen: bytes) -> dict[str, bytes]:
    return {
        "frozen.bin": frozen,
        "weights.bin": os.urandom(40_000),
        "config.json": b"{}",
        "step": b"%d" % step,
    }


def changed_bytes(old: Path, new: Path) -> int:
    known = {f.sha256 for f in read_manifest(old)[0].files}
    return sum(f.size for f in read_manifest(new)[0].files if f.sha256 not in known)


def pulled(standby: Standby, step: int) -> bool:
    return any(p.step == step for p in standby.log.pulls)


def holds(layout: RunLayout, step: int, manifest_sha256: str) -> bool:
    """The volume holds step_N, the very checkpoint the remote names (same manifest), verified."""
    path = layout.step_dir(step)
    if not (path / "manifest.json").is_file():
        return False
    result = verify_checkpoint(path, expected_run_id="run1")
    return result.ok and result.manifest_sha256 == manifest_sha256


async def test_a_standby_keeps_the_remote_s_newest_checkpoint_and_fetches_only_new_files(
    tmp_path: Path,
) -> None:
    url = f"file://{tmp_path / 'remote'}"
    holder = RunLayout(tmp_path / "pod-a", "run1")
    remote = open_remote(url, "run1")
    frozen = os.urandom(1 << 20)
    remote.push(make_committed(holder, 10, files(10, frozen)), epoch=1)
    standby = Standby(standby_cfg(tmp_path / "pod-b", STANDBY_POLL_S="0.05"), "run1", url)
    volume = RunLayout(tmp_path / "pod-b", "run1")
    standby.start()
    try:
        state = remote.state()
        await until(lambda: pulled(standby, 10), 30, "the standby's pull of step 10")
        assert holds(volume, 10, state.manifest_sha256)
        first = standby.log.pulls[0]  # an empty volume: everything comes over the wire
        assert first.bytes_downloaded == read_manifest(holder.step_dir(10))[0].total_bytes
        remote.push(make_committed(holder, 20, files(20, frozen)), epoch=1)
        state = remote.state()
        await until(lambda: pulled(standby, 20), 30, "the standby's pull of step 20")
        assert holds(volume, 20, state.manifest_sha256)
        newer = standby.log.pulls[-1]
        assert newer.step == 20
        assert newer.bytes_downloaded == changed_bytes(holder.step_dir(10), holder.step_dir(20))
        assert newer.bytes_reused >= len(frozen)
        for step in (30, 40):  # keep N (2): files shared between them are stored once
            remote.push(make_committed(holder, step, files(step, frozen)), epoch=1)
            sha = remote.state().manifest_sha256
            await until(lambda s=step, m=sha: holds(volume, s, m), 30, f"step {step} on the volume")
        await until(lambda: [s for s, _ in committed_step_dirs(volume)] == [40, 30], 30, "keep 2")
        assert (volume.step_dir(40) / "frozen.bin").stat().st_ino == (
            volume.step_dir(30) / "frozen.bin"
        ).stat().st_ino
    finally:
        await standby.stop()
    assert standby.log.last_error is None


async def test_a_standby_follows_the_remote_of_the_run_s_spec(make_commander, tmp_path: Path) -> None:
    client = await make_commander()
    spec_remote = f"file://{tmp_path / 'spec-remote'}"
    resp = await client.post("/api/runs", json={"run_id": "run1", "mode": "sft", "remote": spec_remote})
    assert resp.status == 201
    url = str(client.make_url("")).rstrip("/")
    async with CommanderClient(url) as commander:
        own = standby_cfg(tmp_path / "pod", RELAY_REMOTE=f"file://{tmp_path / 'own'}")
        assert await standby_remote(own, commander) == spec_remote  # the spec wins, as in the session
        other = own.model_copy(update={"run_id": "not-submitted"})
        assert await standby_remote(other, commander) == f"file://{tmp_path / 'own'}"


def test_the_handoff_to_a_warm_standby_downloads_only_what_changed(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=5.0)
    url = f"file://{tmp_path / 'remote'}"
    train = {"max_steps": 100_000, "save_steps": 10, "step_seconds": 0.05, "frozen_bytes": 2 << 20}
    a = WorkerProc(
        tmp_path / "pod-a", commander_url=cmd.url, run_id="warm", worker_id="pod-a", remote=url, train=train
    ).start()
    a.wait_event("checkpoint_synced", 60)
    b = WorkerProc(
        tmp_path / "pod-b",
        commander_url=cmd.url,
        run_id="warm",
        worker_id="pod-b",
        remote=url,
        train=train,
        settings={"standby_poll_s": 60},  # one pull at once, then none before the handoff
    ).start()
    volume = RunLayout(tmp_path / "pod-b", "warm")
    wait_for(lambda: committed_step_dirs(volume), 60, "the standby's first pull", b.proc)
    a.send(signal.SIGTERM)
    assert a.wait(60) == 0, a.output()
    final = a.wait_event("preempted")["checkpoint_step"]
    resumed = b.wait_event("resumed", 60)
    assert resumed["step"] == final
    assert resumed["source"] == "remote" and resumed["reused_bytes"] >= 2 << 20
    assert 0 < resumed["downloaded_bytes"] < 1 << 20  # weights, state, marker: never frozen.bin again
    assert "standby: step" in b.output()
    b.wait_event("trainer_started", 60)
    b.send(signal.SIGTERM)
    assert b.wait(60) == 0, b.output()


def test_no_standby_when_it_is_turned_off(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=5.0)
    url = f"file://{tmp_path / 'remote'}"
    train = {"max_steps": 100_000, "save_steps": 5, "step_seconds": 0.02}
    a = WorkerProc(
        tmp_path / "pod-a", commander_url=cmd.url, run_id="cold", worker_id="pod-a", remote=url, train=train
    ).start()
    a.wait_event("checkpoint_synced", 60)
    b = WorkerProc(
        tmp_path / "pod-b",
        commander_url=cmd.url,
        run_id="cold",
        worker_id="pod-b",
        remote=url,
        train=train,
        settings={"standby": "false", "standby_poll_s": 0.1},
    ).start()
    wait_for(lambda: "is held by" in b.output(), 60, "pod-b waiting", b.proc)
    time.sleep(1.0)  # several standby polls' worth: nothing may appear
    assert committed_step_dirs(RunLayout(tmp_path / "pod-b", "cold")) == []
    b.send(signal.SIGTERM)
    assert b.wait(60) == 0
    a.send(signal.SIGTERM)
    assert a.wait(60) == 0
