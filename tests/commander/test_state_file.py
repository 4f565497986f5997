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
