"""``relayctl worker --check``: every problem of a pod, one line each, exit 2; nothing acquired."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.worker.check import check_lines, run_check

RELAYCTL = Path(sys.executable).with_name("relayctl")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts connections and answers none: the check must never connect to it."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def pod_env(tmp_path: Path, port: int = 9) -> dict[str, str]:
    return {
        "COMMANDER_URL": f"http://127.0.0.1:{port}",
        "RUN_ID": "run-1",
        "RELAY_REMOTE": f"file://{tmp_path / 'remote'}",
        "RELAY_SHARED_SECRET": "s3cret",
        "RELAY_ROOT": str(tmp_path / "volume" / "relay"),
    }


def test_a_ready_pod_passes_and_nothing_is_left_behind(tmp_path: Path) -> None:
    err = io.StringIO()
    assert run_check(None, pod_env(tmp_path), err) == 0
    lines = err.getvalue().splitlines()
    assert lines[-1].startswith("relay worker: check passed: worker ")
    assert "run run-1" in lines[-1] and "s3cret" not in err.getvalue()
    assert list(tmp_path.iterdir()) == []  # the probes removed what they made


def test_each_problem_on_its_own_line(tmp_path: Path) -> None:
    env = {**pod_env(tmp_path), "RELAY_ROOT": "/proc/relay", "RELAY_REMOTE": "file:///proc/remote"}
    del env["RELAY_SHARED_SECRET"]
    problems, notes = check_lines(None, env)
    assert notes == []
    assert [p.split(": ")[1] for p in problems] == ["relay_shared_secret", "relay_root", "remote"]
    assert all(p.startswith("config error: ") and "\n" not in p for p in problems)


def test_config_problems_come_all_at_once(tmp_path: Path) -> None:
    env = {**pod_env(tmp_path), "MODE": "ppo", "GRACE_S": "soon", "COMMANDER_URL": ""}
    problems, _ = check_lines(None, env)
    assert [p.split(": ")[1].split(" ")[0] for p in problems] == ["commander_url", "mode", "grace_s"]


def test_the_pod_rules_are_the_printers_rules(tmp_path: Path) -> None:
    """A pod needs a remote and the secret; an hf:// remote needs a token (the model's own rule)."""
    env = {**pod_env(tmp_path), "RELAY_REMOTE": ""}
    assert check_lines(None, env)[0] == [
        "config error: remote (env RELAY_REMOTE): required on a pod: set HF_REPO (owner/name) or RELAY_REMOTE "
        "(hf://owner/name or file:///path); without one a new pod cannot resume the run"
    ]
    env["HF_REPO"] = "me/ckpts"
    (problem,) = check_lines(None, env)[0]
    assert problem.startswith("config error: hf_token: required for the remote hf://me/ckpts")
    env["HF_TOKEN"] = "hf_x"
    assert check_lines(None, env)[0] == []


def test_the_cli_acquires_nothing(tmp_path: Path, listener: socket.socket) -> None:
    env = {"PATH": os.environ["PATH"], **pod_env(tmp_path, listener.getsockname()[1])}
    proc = subprocess.run(
        [str(RELAYCTL), "worker", "--check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "check passed" in proc.stderr
    with pytest.raises(BlockingIOError):
        listener.accept()  # no connection was ever made to the commander
    env["MODE"] = "ppo"
    proc = subprocess.run(
        [str(RELAYCTL), "worker", "--check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        proc.stderr
        == "relay worker: config error: mode (env MODE): Input should be 'sft' or 'rl' (got 'ppo')\n"
    )
    assert not (tmp_path / "volume").exists()
