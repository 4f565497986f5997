"""The commander's state file, with real ``relayctl serve`` processes (issue 13, points 5 and 10): it never
starts on an empty, truncated or corrupt file (naming the file and the check), says out loud when it
creates a new one, and names a read-only or full volume for what it is."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay_testkit import mountns
from relay_testkit.commander_proc import REPO_ROOT, CommanderProcess


def serve_exits(
    state: Path, *, wrap: Any = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``relayctl serve`` on ``state`` and expect it to exit on its own (a refusal)."""
    argv = [sys.executable, "-m", "relay.cli", "serve", "--port", "0", "--state", str(state)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("RELAY_SHARED_SECRET", None)
    return subprocess.run(
        wrap(argv) if wrap else argv,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def used_state(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a state file a commander really used (runs, leases, events), closed cleanly."""
    path = tmp_path_factory.mktemp("used") / "state.db"
    cmd = CommanderProcess(path, lease_ttl_s=30).start()
    try:
        import urllib.request

        for i in range(30):  # a few pages of rows, so there is something to truncate and corrupt
            body = f'{{"run_id": "run-{i}", "worker_id": "w{i}"}}'.encode()
            req = urllib.request.Request(
                f"{cmd.url}/api/lease/acquire", data=body, headers={"Content-Type": "application/json"}
            )
            urllib.request.urlopen(req, timeout=5).read()
        assert cmd.terminate() == 0  # a graceful stop checkpoints the WAL into the file
    finally:
        cmd.close()
    return path.read_bytes()


def test_an_empty_state_file_is_refused_naming_the_file_and_the_check(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(b"")
    done = serve_exits(state)
    assert done.returncode == 1, done.stderr
    assert f"state file {state} is empty (0 bytes) (check: size)" in done.stderr
    assert "epochs from 1 again" in done.stderr and "Traceback" not in done.stderr
    assert state.read_bytes() == b""  # untouched


def test_a_file_that_is_not_sqlite_is_refused_by_the_header_check(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.write_text("runs:\n  - r1\n" * 20)
    done = serve_exits(state)
    assert done.returncode == 1 and "(check: header)" in done.stderr and str(state) in done.stderr, (
        done.stderr
    )


def test_a_truncated_state_file_is_refused_by_the_length_check(tmp_path: Path, used_state: bytes) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(used_state[: len(used_state) // 2])
    done = serve_exits(state)
    assert done.returncode == 1 and "is truncated" in done.stderr and "(check: length)" in done.stderr, (
        done.stderr
    )


def test_a_state_file_that_fails_integrity_check_is_refused(tmp_path: Path, used_state: bytes) -> None:
    state = tmp_path / "state.db"
    page = int.from_bytes(used_state[16:18], "big")
    damaged = bytearray(used_state)
    last = len(damaged) // page - 1  # a page of rows or index, not the schema on page 1
    damaged[last * page + 8 : last * page + 200] = os.urandom(192)
    state.write_bytes(bytes(damaged))
    with sqlite3.connect(
        state
    ) as raw:  # SQLite itself opens it and reads the schema: only a full check tells
        assert raw.execute("PRAGMA user_version").fetchone()[0] > 0
    done = serve_exits(state)
    assert done.returncode == 1, done.stderr
    assert f"state file {state} is corrupt" in done.stderr and "(check: integrity_check)" in done.stderr


def test_a_whole_state_file_is_served(tmp_path: Path, used_state: bytes) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(used_state)
    with CommanderProcess(state) as cmd:
        import json
        import urllib.request

        runs = json.loads(urllib.request.urlopen(f"{cmd.url}/api/runs", timeout=5).read())["runs"]
        assert len(runs) == 30
        assert "creating a new one" not in cmd.output()


def test_a_new_state_file_is_said_out_loud_and_an_empty_unmounted_directory_is_warned_about(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "volume"
    empty.mkdir()
    with CommanderProcess(empty / "state.db", log_path=tmp_path / "a.log") as cmd:
        out = cmd.output()
    assert f"no state file at {empty / 'state.db'}: creating a new one" in out
    assert f"the state directory {empty} is empty and is not a mount point" in out
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "README").write_text("the commander's state lives here\n")
    with CommanderProcess(busy / "state.db", log_path=tmp_path / "b.log") as cmd:
        out = cmd.output()
    assert "creating a new one" in out and "not a mount point" not in out


needs_mounts = pytest.mark.skipif(mountns.unavailable() is not None, reason=str(mountns.unavailable()))


@needs_mounts
def test_serve_on_a_read_only_filesystem_says_so(tmp_path: Path, used_state: bytes) -> None:
    volume = tmp_path / "ro"
    volume.mkdir()
    (volume / "state.db").write_bytes(used_state)
    done = serve_exits(volume / "state.db", wrap=lambda argv: mountns.wrapped(argv, volume, readonly=True))
    assert done.returncode == 1, done.stderr
    assert "read-only filesystem" in done.stderr and str(volume) in done.stderr, done.stderr
    assert "cannot listen" not in done.stderr and "Traceback" not in done.stderr


@needs_mounts
def test_serve_on_a_full_volume_says_so_and_creates_nothing_half_way(tmp_path: Path) -> None:
    volume = tmp_path / "tiny"
    volume.mkdir()
    done = serve_exits(volume / "state.db", wrap=lambda argv: mountns.wrapped(argv, volume, tmpfs_bytes=8192))
    assert done.returncode == 1, done.stderr
    assert "disk is full" in done.stderr and "free space on the state file's volume" in done.stderr, (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def _call(cmd: CommanderProcess, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        cmd.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@needs_mounts
def test_a_volume_that_fills_up_under_a_running_commander(tmp_path: Path) -> None:
    """Renewals go on from memory, changes are refused with a 503 that says why, the log says it once
    (not once per request), and once space is freed everything works again."""
    volume = tmp_path / "vol"
    volume.mkdir()
    cmd = CommanderProcess(
        volume / "state.db",
        lease_ttl_s=30,
        log_path=tmp_path / "commander.log",
        wrap=lambda argv: mountns.wrapped(argv, volume, tmpfs_bytes=4 << 20),
    )
    with cmd:
        status, grant = _call(cmd, "/api/lease/acquire", {"run_id": "r1", "worker_id": "w1"})
        assert status == 200, grant
        lease = {"run_id": "r1", "worker_id": "w1", "lease_id": grant["lease_id"], "epoch": grant["epoch"]}
        filler = mountns.seen_by(cmd.pid or 0, volume / "filler")
        with open(filler, "wb") as f:  # fill the commander's volume to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        lines = [{"ts": 1.0, "stream": "stdout", "line": "x" * 1000}] * 200
        refused = 0
        for step in range(40):
            assert _call(cmd, "/api/lease/renew", lease)[0] == 200
            report = {k: v for k, v in lease.items() if k != "run_id"} | {"step": step, "log_tail": lines}
            status, body = _call(cmd, "/api/runs/r1/report", report)
            if status == 503:
                refused += 1
                assert "disk is full" in body["error"], body
        status, body = _call(cmd, "/api/lease/acquire", {"run_id": "r2", "worker_id": "w2"})
        assert status == 503 and "disk is full" in body["error"], body
        assert refused >= 30, refused
        log = cmd.output()
        assert 1 <= log.count("disk is full") <= 4, log[-3000:]
        assert "Traceback" not in log
        filler.unlink()  # space again
        status, body = _call(cmd, "/api/lease/acquire", {"run_id": "r2", "worker_id": "w2"})
        assert status == 200, body
        assert _call(cmd, "/api/lease/renew", lease)[0] == 200
        assert "state store commits again" in cmd.output()


def _lease(grant: dict[str, Any], worker_id: str) -> dict[str, Any]:
    return {
        "run_id": grant["run_id"],
        "worker_id": worker_id,
        "lease_id": grant["lease_id"],
        "epoch": grant["epoch"],
    }


def _granted(cmd: CommanderProcess, run_id: str, worker_id: str) -> dict[str, Any]:
    from relay_testkit.wait import wait_for

    def ask() -> dict[str, Any] | None:
        status, body = _call(cmd, "/api/lease/acquire", {"run_id": run_id, "worker_id": worker_id})
        return body if status == 200 else None

    return wait_for(ask, 20, f"{run_id} to be granted to {worker_id}")


def test_a_lost_state_file_holds_every_grant_for_one_ttl(tmp_path: Path) -> None:
    """The state file deleted under a used lock file: leases granted from it may still be held, so nothing is
    granted for one TTL, and a holder that calls in teaches the commander its run's epoch."""
    state = tmp_path / "state.db"
    cmd = CommanderProcess(state, lease_ttl_s=2.0, log_path=tmp_path / "commander.log").start()
    try:
        old = [_call(cmd, "/api/lease/acquire", {"run_id": "r1", "worker_id": "w1"})[1]]
        for _ in range(4):  # r1 reaches epoch 5 with w1 holding it
            _call(cmd, "/api/lease/release", _lease(old[-1], "w1") | {"outcome": "preempted"})
            old.append(_call(cmd, "/api/lease/acquire", {"run_id": "r1", "worker_id": "w1"})[1])
        assert old[-1]["epoch"] == 5
        cmd.kill()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{state}{suffix}").unlink(missing_ok=True)
        cmd.start()
        assert ".lock is there: a commander used this state before" in cmd.output()
        status, held = _call(cmd, "/api/lease/acquire", {"run_id": "fresh", "worker_id": "w2"})
        assert status == 409 and held["holder"] is None and held["retry_after_s"] > 0, held
        assert "without its state file" in held["detail"]
        status, refused = _call(cmd, "/api/lease/renew", _lease(old[-1], "w1"))
        assert status == 409 and "this state is behind" in refused["error"], refused
        assert _granted(cmd, "r1", "w2")["epoch"] == 6  # once the TTL is out, past the epoch w1 showed
        assert _granted(cmd, "fresh", "w3")["epoch"] == 1
    finally:
        cmd.close()


def test_an_older_copy_of_the_state_file_is_caught_up_by_the_holders(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    cmd = CommanderProcess(state, lease_ttl_s=2.0, log_path=tmp_path / "commander.log").start()
    try:
        first = _call(cmd, "/api/lease/acquire", {"run_id": "r1", "worker_id": "w1"})[1]
        assert cmd.terminate() == 0
        backup = state.read_bytes()  # the copy an operator will restore by mistake
        cmd.start()
        _call(cmd, "/api/lease/release", _lease(first, "w1") | {"outcome": "preempted"})
        second = _granted(cmd, "r1", "w2")
        assert second["epoch"] == 2
        cmd.kill()
        for suffix in ("-wal", "-shm"):
            Path(f"{state}{suffix}").unlink(missing_ok=True)
        state.write_bytes(backup)
        cmd.start()
        # the restored state says w1 holds r1 at epoch 1; w2, which really holds it at epoch 2, calls in
        status, refused = _call(cmd, "/api/lease/renew", _lease(second, "w2"))
        assert status == 409 and "this state is behind" in refused["error"], refused
        status, held = _call(cmd, "/api/lease/acquire", {"run_id": "r1", "worker_id": "w3"})
        assert status == 409, held  # w1's restored lease, then the first TTL: nobody overlaps w2's trainer
        assert _granted(cmd, "r1", "w3")["epoch"] == 3
    finally:
        cmd.close()
