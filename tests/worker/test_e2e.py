"""End to end: a real commander subprocess, real worker subprocesses, the mock trainer."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from relay_testkit.wait import wait_for
from relay_testkit.workerproc import WorkerProc, step_counts

TTL = 3.0


def run_detail(cmd: Any, run_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{cmd.url}/api/runs/{run_id}", timeout=5) as resp:
        return json.loads(resp.read())


def test_cold_start_to_completion(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod-a",
        commander_url=cmd.url,
        run_id="cold",
        worker_id="pod-a",
        train={"max_steps": 20, "save_steps": 5, "step_seconds": 0.02},
    ).start()
    assert w.wait(60) == 0, w.output()
    names = [e["event"] for e in w.events()]
    assert names[:3] == ["acquired", "resumed", "trainer_started"], names
    assert names[-1] == "completed"
    assert w.events()[1]["source"] == "cold_start"
    committed = [e["step"] for e in w.events() if e["event"] == "checkpoint_committed"]
    # the newest complete checkpoint is committed; older ones staged in the same poll are superseded
    assert committed[-1] == 20 and committed == sorted(set(committed)) and set(committed) <= {5, 10, 15, 20}
    assert step_counts(w.mock_log()) == {s: 1 for s in range(1, 21)}
    detail = run_detail(cmd, "cold")
    assert detail["status"] == "completed"
    assert detail["step"] == 20 and detail["latest_checkpoint"]["step"] == 20
    assert any("loss" in m["metrics"] for m in detail["metrics_history"])  # reports carried metrics
    reported = {e["name"] for e in detail["events"]}
    assert {"resumed", "trainer_started", "checkpoint_committed", "completed"} <= reported
    assert "run cold completed" in w.output()


def post(cmd: Any, path: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{cmd.url}{path}", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def list_runs(cmd: Any) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{cmd.url}/api/runs", timeout=5) as resp:
        return json.loads(resp.read())["runs"]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_hang_is_detected_and_the_trainer_restarted(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="hang",
        worker_id="pod-h",
        train={"max_steps": 14, "save_steps": 5, "step_seconds": 0.03, "hang_at_step": 8, "hang_times": 1},
        settings={"hang_timeout_s": 1.0, "startup_timeout_s": 15.0},  # start-up may be slow under load
    ).start()
    assert w.wait(60) == 0, w.output()
    ev = w.events()
    names = [e["event"] for e in ev]
    hang = next(e for e in ev if e["event"] == "hang_detected")
    restart = next(e for e in ev if e["event"] == "trainer_restarted")
    assert names.index("hang_detected") < names.index("trainer_restarted") < len(names) - 1
    assert hang["step"] == 7 and restart["resume_step"] == 5 and "hung" in restart["reason"]
    assert names[-1] == "completed" and names.count("trainer_started") == 2
    counts = step_counts(w.mock_log())
    assert set(counts) == set(range(1, 15))
    assert all(counts[s] == 1 for s in range(1, 6)), counts  # nothing before the checkpoint ran twice
    assert run_detail(cmd, "hang")["status"] == "completed"


def test_trainer_config_error_fails_at_once_without_restarts(tmp_path: Path, commander_factory: Any) -> None:
    """Exit code 2 is a config/data error by the trainer contract: restarting would only burn the budget."""
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="badkey",
        worker_id="pod-k",
        train={"max_steps": 5, "save_steps": 1, "no_such_key": 1},
        settings={"max_restarts": 3, "restart_backoff_s": 0.05},
    ).start()
    assert w.wait(60) == 4, w.output()
    names = [e["event"] for e in w.events()]
    assert names.count("trainer_started") == 1 and "trainer_restarted" not in names
    assert names[-1] == "failed"
    detail = run_detail(cmd, "badkey")
    assert detail["status"] == "failed"
    assert "configuration or data error" in detail["detail"] and "not restarted" in detail["detail"]
    assert "no_such_key" in detail["detail"]  # the trainer's own message travels with the release
    assert detail["restarts"] == 0  # not spent on a failure every pod would repeat


def test_crash_loop_ends_failed_after_max_restarts(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="crashy",
        worker_id="pod-c",
        train={"max_steps": 50, "save_steps": 2, "step_seconds": 0.01, "crash_at_step": 3},
        settings={"max_restarts": 2, "restart_backoff_s": 0.05},
    ).start()
    assert w.wait(60) == 4, w.output()
    ev = w.events()
    names = [e["event"] for e in ev]
    assert names.count("trainer_restarted") == 2 and names.count("trainer_started") == 3
    assert names[-1] == "failed"
    failed = ev[-1]
    assert failed["exit_code"] == 3 and "injected crash at step 3" in "\n".join(failed["log_tail"])
    detail = run_detail(cmd, "crashy")
    assert detail["status"] == "failed"
    assert "exit code 3" in detail["detail"] and "max_restarts=2" in detail["detail"]
    assert "injected crash" in detail["detail"]  # the log tail travels with the release


def test_trainer_env_and_cuda_oom_is_named(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    launchers = tmp_path / "launchers"
    launchers.mkdir()
    (launchers / "launch_sft.sh").write_text(
        "#!/usr/bin/env bash\nenv | grep -E '^(RELAY_|HF_TOKEN)' > \"$RELAY_OUTPUT_DIR/../../env.txt\"\n"
        "echo 'step 1'\n"
        "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB' >&2\nexit 1\n"
    )
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="oom",
        worker_id="pod-o",
        train={"model": "tiny", "lr": 0.001},
        settings={
            "max_restarts": 0,
            "relay_trainer_dir": launchers,
            "relay_shared_secret": "not-for-trainers",
        },
    ).start()
    assert w.wait(30) == 4, w.output()
    assert w.events()[-1]["oom"] is True
    assert "CUDA out of memory" in run_detail(cmd, "oom")["detail"]
    env = dict(line.split("=", 1) for line in (w.run_dir() / "env.txt").read_text().splitlines())
    layout = w.run_dir()
    assert env["RELAY_RUN_ID"] == "oom" and env["RELAY_MODE"] == "sft" and env["RELAY_EPOCH"] == "1"
    assert env["RELAY_OUTPUT_DIR"] == str(layout / "ckpt" / "_staging")
    assert env["RELAY_RESUME_FROM"] == ""
    assert env["RELAY_PROGRESS_FILE"] == str(layout / "progress.jsonl")
    assert env["RELAY_PYTHON"] == sys.executable
    assert json.loads(Path(env["RELAY_TRAIN_CONFIG"]).read_text()) == {"model": "tiny", "lr": 0.001}
    assert "RELAY_SHARED_SECRET" not in env
    assert "torch.OutOfMemoryError" in (layout / "logs" / "trainer.log").read_text()


def test_cancel_stops_the_trainer_gracefully(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="cancelme",
        worker_id="pod-x",
        train={"max_steps": 10000, "save_steps": 5, "step_seconds": 0.02},
    ).start()
    w.wait_event("checkpoint_committed")
    post(cmd, "/api/runs/cancelme/cancel")
    assert w.wait(30) == 0, w.output()
    names = [e["event"] for e in w.events()]
    assert names[-1] == "cancelled"
    mock = w.mock_log()
    assert any(r["event"] == "sigterm" for r in mock)  # stopped gracefully, not killed
    assert mock[-1]["event"] == "exit" and mock[-1]["reason"] == "sigterm"
    assert run_detail(cmd, "cancelme")["status"] == "cancelled"
    # a cancelled run is closed: another worker has nothing to do and says so
    again = WorkerProc(tmp_path / "pod2", commander_url=cmd.url, run_id="cancelme", worker_id="pod-y").start()
    assert again.wait(30) == 0
    assert "cancelled" in again.output() and not again.events()


def test_bad_config_stops_before_acquiring(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="badcfg",
        worker_id="pod-b",
        settings={"max_restarts": "lots"},
    ).start()
    assert w.wait(30) == 2
    out = w.output().strip().splitlines()
    assert len(out) == 1 and "max_restarts" in out[0] and "MAX_RESTARTS" in out[0], out
    assert list_runs(cmd) == []
    assert not (tmp_path / "pod" / "runs").exists()


def test_worker_kill_9_takes_the_trainer_with_it(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="k9",
        worker_id="pod-k",
        train={"max_steps": 100000, "save_steps": 0, "step_seconds": 0.02},
    ).start()
    pid = w.wait_event("trainer_started")["pid"]
    assert wait_for(lambda: len(w.progress()) > 2)
    assert pid_alive(pid)
    w.send(signal.SIGKILL)
    w.wait(10)
    assert wait_for(lambda: not pid_alive(pid), 5), "the trainer outlived its worker"
    steps = len(w.progress())
    time.sleep(0.2)
    assert len(w.progress()) == steps  # nothing trains any more


def test_paused_commander_fences_the_worker_before_its_ttl(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    # A trains slowly (it must still be training when the fence comes); B finishes the run quickly
    slow = {"max_steps": 300, "save_steps": 5, "step_seconds": 0.05}
    fast = {**slow, "step_seconds": 0.002}
    root = tmp_path / "pod"  # the same volume: B resumes from A's local checkpoint
    a = WorkerProc(root, commander_url=cmd.url, run_id="stop", worker_id="pod-a", train=slow).start()
    trainer_a = a.wait_event("trainer_started")["pid"]
    a.wait_event("checkpoint_committed")
    time.sleep(1.2)  # at least one renewal after the grant
    cmd.pause()
    paused_at = time.time()
    try:
        b = WorkerProc(root, commander_url=cmd.url, run_id="stop", worker_id="pod-b", train=fast).start()
        fenced = a.wait_event("fenced", timeout=TTL + 5)
        assert a.wait(10) == 3
        assert not pid_alive(trainer_a)
        # killed before the lease could have expired at the commander (its ttl counts from the last
        # renewal, which was before the pause)
        assert fenced["ts"] < paused_at + TTL, fenced["ts"] - paused_at
        assert "no successful lease renewal" in fenced["message"]
        assert "FENCED" in a.output()
        assert not [e for e in b.events() if e["worker_id"] == "pod-b"]  # B got nothing meanwhile
    finally:
        cmd.resume()
    acquired_b = b.wait_event("acquired", timeout=30, pred=lambda e: e["worker_id"] == "pod-b")
    assert acquired_b["epoch"] == 2 and acquired_b["ts"] > fenced["ts"]
    assert b.wait(60) == 0, b.output()
    resumed = next(e for e in b.events() if e["event"] == "resumed" and e["epoch"] == 2)
    assert resumed["source"] == "local" and resumed["step"] >= 5
    steps = [r for r in a.mock_log() if r["event"] == "step"]
    last_a = max(r["ts"] for r in steps if r["epoch"] == 1)
    first_b = min(r["ts"] for r in steps if r["epoch"] == 2)
    assert last_a < acquired_b["ts"] <= first_b  # never two trainers at once
    assert max(r["step"] for r in steps) == 300
    assert run_detail(cmd, "stop")["status"] == "completed"


@pytest.mark.parametrize("kind", ["file", "hub"])
def test_sigterm_hands_the_run_to_a_fresh_pod_through_the_remote(
    tmp_path: Path, commander_factory: Any, kind: str
) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    env: dict[str, str] = {}
    hub = None
    if kind == "hub":
        from relay_testkit.hub_server import HubServer

        hub = HubServer(tmp_path / "hub", token="hf_test_token").start()
        env = hub.env()
        remote = "hf://relay-test/ckpts"
    else:
        remote = f"file://{tmp_path / 'remote'}"
    try:
        _relay_through(tmp_path, cmd, remote, env)
        if hub is not None:
            assert any(
                p.startswith("relay/checkpoints/step_00000060/") for p in hub.files("relay-test/ckpts")
            )
    finally:
        if hub is not None:
            hub.stop()


def _relay_through(tmp_path: Path, cmd: Any, remote: str, env: dict[str, str]) -> None:
    train = {"max_steps": 60, "save_steps": 10, "step_seconds": 0.04}
    a = WorkerProc(
        tmp_path / "pod-a",
        commander_url=cmd.url,
        run_id="relay",
        worker_id="pod-a",
        remote=remote,
        train=train,
        env=env,
    )
    a.start()
    a.wait_event("checkpoint_synced", pred=lambda e: e["step"] >= 10)  # 10, or later on a loaded machine
    assert wait_for(lambda: len(a.progress()) >= 14)
    a.send(signal.SIGTERM)
    assert a.wait(30) == 0, a.output()
    ev_a = a.events()
    assert ev_a[-1]["event"] == "preempted" and ev_a[-1]["released"] is True
    final = ev_a[-1]["checkpoint_step"]
    assert final >= 14  # A had trained 14 steps when it got SIGTERM (below: and saved the step it was on)
    synced = [e["step"] for e in ev_a if e["event"] == "checkpoint_synced"]
    assert synced[-1] == final  # synced before the release
    assert run_detail(cmd, "relay")["status"] == "preempted"

    b = WorkerProc(
        tmp_path / "pod-b",
        commander_url=cmd.url,
        run_id="relay",
        worker_id="pod-b",
        remote=remote,
        train=train,
        env=env,
    )
    assert not b.run_dir().exists()  # another machine: nothing local
    b.start()
    assert b.wait(60) == 0, b.output()
    resumed = next(e for e in b.events() if e["event"] == "resumed")
    assert resumed["source"] == "remote" and resumed["step"] == final and resumed["epoch"] == 2
    counts_a, counts_b = step_counts(a.mock_log()), step_counts(b.mock_log())
    assert counts_a == {s: 1 for s in range(1, final + 1)}  # A saved the step it was on at SIGTERM
    assert counts_b == {s: 1 for s in range(final + 1, 61)}  # no step trained twice
    assert b.events()[-1]["event"] == "completed"
    assert [e["step"] for e in b.events() if e["event"] == "checkpoint_synced"][-1] == 60
    assert run_detail(cmd, "relay")["status"] == "completed"


def seed_waiting_run(cmd: Any, run_id: str) -> None:
    """A run in status preempted (waiting for any worker), made through the lease API itself."""

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{cmd.url}{path}",
            method="POST",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    grant = call("/api/lease/acquire", {"run_id": run_id, "worker_id": "seeder", "mode": "sft"})
    call(
        "/api/lease/release",
        {
            "run_id": run_id,
            "worker_id": "seeder",
            "lease_id": grant["lease_id"],
            "epoch": grant["epoch"],
            "outcome": "preempted",
            "detail": "seeded",
        },
    )


def test_pool_worker_takes_waiting_runs_until_none_is_left(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    seed_waiting_run(cmd, "pool-1")
    seed_waiting_run(cmd, "pool-2")
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id=None,
        worker_id="pool",
        train={"max_steps": 6, "save_steps": 3, "step_seconds": 0.01},
    ).start()
    assert w.wait(60) == 0, w.output()
    for run_id in ("pool-1", "pool-2"):
        assert run_detail(cmd, run_id)["status"] == "completed"
        assert w.events(run_id)[-1]["event"] == "completed"
    first_done = w.events("pool-1")[-1]["ts"]
    assert w.events("pool-2")[0]["ts"] > first_done  # one after the other, oldest first
    assert "no run is waiting" in w.output()


def test_idle_pool_worker_exits_after_idle_exit_s(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    started = time.monotonic()
    w = WorkerProc(
        tmp_path / "pod", commander_url=cmd.url, run_id=None, worker_id="idle", settings={"idle_exit_s": 1.0}
    ).start()
    assert w.wait(30) == 0
    assert time.monotonic() - started >= 1.0
    assert "no run is waiting" in w.output()


def test_remote_refusing_our_epoch_fences_the_worker(tmp_path: Path, commander_factory: Any) -> None:
    from relay.ckpt.layout import RunLayout
    from relay.ckpt.verify import latest_committed
    from relay.remote import open_remote

    cmd = commander_factory(lease_ttl_s=TTL)
    remote = f"file://{tmp_path / 'remote'}"
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="split",
        worker_id="pod-s",
        remote=remote,
        train={"max_steps": 100000, "save_steps": 5, "step_seconds": 0.02},
    ).start()
    pid = w.wait_event("trainer_started")["pid"]
    w.wait_event("checkpoint_synced")
    # a newer lease holder (epoch 99) publishes: the next push of this worker must be refused
    ckpt = latest_committed(RunLayout(tmp_path / "pod", "split"))
    assert ckpt is not None
    open_remote(remote, "split").push(ckpt, epoch=99)
    assert w.wait(30) == 3, w.output()
    fenced = w.events()[-1]
    assert fenced["event"] == "fenced" and "remote" in fenced["message"]
    assert wait_for(lambda: not pid_alive(pid), 5)


def test_sigint_waits_grace_s_then_kills_a_trainer_that_ignores_sigterm(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="stubborn",
        worker_id="pod-i",
        train={"max_steps": 100000, "save_steps": 5, "step_seconds": 0.02, "ignore_sigterm": True},
        settings={"grace_s": 1.0},
    ).start()
    pid = w.wait_event("trainer_started")["pid"]
    w.wait_event("checkpoint_committed")
    sent = time.monotonic()
    w.send(signal.SIGINT)
    assert w.wait(20) == 0, w.output()
    assert 1.0 <= time.monotonic() - sent < 4.0
    assert not pid_alive(pid)
    assert any(r["event"] == "sigterm_ignored" for r in w.mock_log())
    last = w.events()[-1]
    assert last["event"] == "preempted" and last["released"] and last["checkpoint_step"] >= 5
    assert "SIGINT" in run_detail(cmd, "stubborn")["detail"]


def test_max_runtime_stops_and_releases_failed(tmp_path: Path, commander_factory: Any) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    w = WorkerProc(
        tmp_path / "pod",
        commander_url=cmd.url,
        run_id="slow",
        worker_id="pod-m",
        train={"max_steps": 100000, "save_steps": 0, "step_seconds": 0.02},
        settings={"max_runtime_s": 1.0},
    ).start()
    assert w.wait(20) == 4, w.output()
    last = w.events()[-1]
    assert last["event"] == "failed" and last["checkpoint_step"] > 0  # saved on the way out
    assert any(r["event"] == "sigterm" for r in w.mock_log())
    detail = run_detail(cmd, "slow")
    assert detail["status"] == "failed" and "max_runtime_s" in detail["detail"]
