"""relayctl print-lium-command / print-runpod-command / print-docker-command."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import main
from relay.deploy.workerenv import CALLER_ENV

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-value"
TOKEN = "hf_tok_value"
BASE = [
    "--commander-url",
    "http://10.0.0.5:8420",
    "--run-id",
    "run-1",
    "--hf-repo",
    "me/ckpts",
    "--shared-secret",
    SECRET,
    "--hf-token",
    TOKEN,
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own COMMANDER_URL etc. must not leak into these tests."""
    for key in (*CALLER_ENV, "RELAY_RUN_CONFIG", "WORKER_ID"):
        monkeypatch.delenv(key, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def env_pairs(argv: list[str], flag: str) -> dict[str, str]:
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == flag]
    return dict(p.split("=", 1) for p in pairs)


def test_lium_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys,
        "print-lium-command",
        "--template-id",
        "tmpl-9",
        "--volume",
        "id:vol-1",
        "--pod-name",
        "p1",
        *BASE,
    )
    assert rc == 0, err
    argv = shlex.split(out)
    assert argv[:2] == ["lium", "up"]
    assert argv[argv.index("--name") + 1] == "p1"
    assert argv[argv.index("--template_id") + 1] == "tmpl-9"
    assert argv[argv.index("--volume") + 1] == "id:vol-1"
    env = env_pairs(argv, "--env")
    assert env["COMMANDER_URL"] == "http://10.0.0.5:8420" and env["RUN_ID"] == "run-1"
    assert env["MODE"] == "sft" and env["HF_REPO"] == "me/ckpts"
    assert env["RELAY_SHARED_SECRET"] == "***" and env["HF_TOKEN"] == "***"
    assert SECRET not in out + err and TOKEN not in out + err
    assert "--show-secrets" in err
    assert len(out.strip().splitlines()) == 1  # one copy-pasteable line


def test_lium_show_secrets_and_default_name(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "print-lium-command", "--template-id", "t", "--show-secrets", *BASE)
    assert rc == 0, err
    argv = shlex.split(out)
    env = env_pairs(argv, "--env")
    assert env["RELAY_SHARED_SECRET"] == SECRET and env["HF_TOKEN"] == TOKEN
    assert argv[argv.index("--name") + 1] == "relay-run-1"
    assert "--volume" not in argv and "no --volume" in err  # a warning, on stderr only


def test_runpod_cli_line_and_rest_body(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys,
        "print-runpod-command",
        "--image",
        "me/relay-trainer:0.1.0",
        "--gpu-type",
        "NVIDIA A100 80GB PCIe",
        "--gpu-count",
        "2",
        "--volume-size",
        "80",
        "--interruptible",
        *BASE,
    )
    assert rc == 0, err
    lines = out.splitlines()
    cli = next(ln for ln in lines if ln.startswith("runpodctl "))
    argv = shlex.split(cli)
    assert argv[:3] == ["runpodctl", "create", "pod"]
    for flag, value in (
        ("--name", "relay-run-1"),
        ("--imageName", "me/relay-trainer:0.1.0"),
        ("--gpuType", "NVIDIA A100 80GB PCIe"),
        ("--gpuCount", "2"),
        ("--volumeSize", "80"),
        ("--volumePath", "/mnt"),
    ):
        assert argv[argv.index(flag) + 1] == value, flag
    assert env_pairs(argv, "--env")["HF_TOKEN"] == "***"
    rest_at = next(
        i for i, ln in enumerate(lines) if ln.startswith("# REST API: POST https://rest.runpod.io/v1/pods")
    )
    body = json.loads("\n".join(lines[rest_at + 1 :]))
    assert body["name"] == "relay-run-1" and body["imageName"] == "me/relay-trainer:0.1.0"
    assert body["gpuTypeIds"] == ["NVIDIA A100 80GB PCIe"] and body["gpuCount"] == 2
    assert body["volumeInGb"] == 80 and body["volumeMountPath"] == "/mnt"
    assert body["interruptible"] is True
    assert body["env"]["RUN_ID"] == "run-1" and body["env"]["RELAY_SHARED_SECRET"] == "***"
    assert SECRET not in out and TOKEN not in out


def test_runpod_json_only_with_secrets_and_network_volume(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys,
        "print-runpod-command",
        "--image",
        "img",
        "--format",
        "json",
        "--network-volume-id",
        "nv-1",
        "--show-secrets",
        *BASE,
    )
    assert rc == 0, err
    body = json.loads(out)  # nothing but the body: pipeable to curl -d @-
    assert body["networkVolumeId"] == "nv-1" and "volumeInGb" not in body
    assert body["env"]["RELAY_SHARED_SECRET"] == SECRET and body["env"]["HF_TOKEN"] == TOKEN


def test_docker_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys, "print-docker-command", "--image", "me/img:1", "--volume", "/data/relay", *BASE
    )
    assert rc == 0, err
    argv = shlex.split(out)
    assert argv[:2] == ["docker", "run"] and argv[-1] == "me/img:1"
    assert argv[argv.index("--gpus") + 1] == "all"
    assert argv[argv.index("-v") + 1] == "/data/relay:/mnt"
    assert argv[argv.index("--stop-timeout") + 1] == "90"  # grace 60 s + margin, not docker's 10 s
    env = env_pairs(argv, "-e")
    assert env["RELAY_SHARED_SECRET"] == "***" and env["MODE"] == "sft"


def test_flags_beat_env_which_beats_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "commander_url: http://config:1\nrun_id: from-config\nmode: rl\nhf_repo: cfg/repo\n"
        "relay_shared_secret: cfg-secret\ngrace_s: 120\nhang_timeout_s: null\nworker_id: not-passed\n"
        "train: {max_steps: 100, model: tiny}\n"
    )
    monkeypatch.setenv("COMMANDER_URL", "http://from-env:2")
    monkeypatch.setenv("RUN_ID", "from-env")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    rc, out, err = run(
        capsys,
        "print-docker-command",
        "--image",
        "i",
        "--volume",
        "v",
        "--config",
        str(cfg),
        "--run-id",
        "from-flag",
    )
    assert rc == 0, err
    argv = shlex.split(out)
    env = env_pairs(argv, "-e")
    assert env["RUN_ID"] == "from-flag"  # flag over env over config
    assert env["COMMANDER_URL"] == "http://from-env:2"  # env over config
    assert env["MODE"] == "rl" and env["HF_REPO"] == "cfg/repo"  # config when nothing else
    assert env["GRACE_S"] == "120.0" and env["HANG_TIMEOUT_S"] == ""
    assert json.loads(env["TRAIN"]) == {"max_steps": 100, "model": "tiny"}
    assert "WORKER_ID" not in env  # one config for many pods: each names itself
    assert argv[argv.index("--stop-timeout") + 1] == "150"
    assert env["RELAY_SHARED_SECRET"] == "***" and "cfg-secret" not in out


def test_values_are_shell_quoted(capsys: pytest.CaptureFixture[str]) -> None:
    cmd = """bash /workspace/run.sh --name "a b" --x 'y' $HOME;rm -rf /"""
    rc, out, err = run(
        capsys,
        "print-docker-command",
        "--image",
        "i",
        "--volume",
        "v",
        "--env",
        f"SLIME_SFT_CMD={cmd}",
        *BASE,
    )
    assert rc == 0, err
    assert env_pairs(shlex.split(out), "-e")["SLIME_SFT_CMD"] == cmd


def test_credential_like_extra_env_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys,
        "print-docker-command",
        "--image",
        "i",
        "--volume",
        "v",
        "--env",
        "WANDB_API_KEY=wk-123",
        *BASE,
    )
    assert rc == 0, err
    assert env_pairs(shlex.split(out), "-e")["WANDB_API_KEY"] == "***" and "wk-123" not in out


def test_settings_from_the_callers_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COMMANDER_URL", "https://relay.example.com")
    monkeypatch.setenv("RELAY_SHARED_SECRET", SECRET)
    monkeypatch.setenv("RELAY_REMOTE", "file:///shared/remote")
    monkeypatch.setenv("MODE", "rl")
    rc, out, err = run(capsys, "print-lium-command", "--template-id", "t")
    assert rc == 0, err
    env = env_pairs(shlex.split(out), "--env")
    assert env == {
        "COMMANDER_URL": "https://relay.example.com",
        "MODE": "rl",
        "RELAY_REMOTE": "file:///shared/remote",
        "RELAY_SHARED_SECRET": "***",
    }
    assert shlex.split(out)[shlex.split(out).index("--name") + 1] == "relay-rl-worker"


BAD = {
    "no-commander": (["--hf-repo", "a/b", "--shared-secret", "s", "--hf-token", "t"], "pass --commander-url"),
    "bad-commander": ([*BASE, "--commander-url", "ftp://x"], "--commander-url: must be an http"),
    "bad-run-id": ([*BASE, "--run-id", "../etc"], "--run-id: must be 1-128 characters"),
    "dotdot-run-id": ([*BASE, "--run-id", ".."], "--run-id: must not be '.' or '..'"),
    "bad-worker-id": ([*BASE, "--worker-id", "a b"], "--worker-id: must be 1-128"),
    "no-remote": (["--commander-url", "http://h:1", "--shared-secret", "s"], "no checkpoint remote"),
    "bad-remote": (
        [*BASE[:4], "--remote", "s3://b", "--shared-secret", "s"],
        "--remote: unsupported remote URL 's3://b'",
    ),
    "no-secret": (
        ["--commander-url", "http://h:1", "--hf-repo", "a/b", "--hf-token", "t"],
        "no shared secret",
    ),
    "no-hf-token": (
        ["--commander-url", "http://h:1", "--hf-repo", "a/b", "--shared-secret", "s"],
        "no Hugging Face token",
    ),
    "env-overrides-setting": ([*BASE, "--env", "MODE=rl"], "give it with --mode"),
    "env-not-key-value": ([*BASE, "--env", "NOEQUALS"], "expected KEY=VALUE"),
    "env-bad-name": ([*BASE, "--env", "MY-TOKEN=s3cret-value"], "--env MY-TOKEN: expected KEY=VALUE"),
    "missing-config": ([*BASE, "--config", "/nonexistent.yaml"], "config file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize(
    "command",
    [
        ["print-lium-command", "--template-id", "t"],
        ["print-runpod-command", "--image", "i"],
        ["print-docker-command", "--image", "i", "--volume", "v"],
    ],
    ids=["lium", "runpod", "docker"],
)
def test_bad_input_is_one_line_and_exit_2(
    case: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    extra, expected = BAD[case]
    rc, out, err = run(capsys, *command, *extra)
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err
    assert SECRET not in err


def test_loopback_commander_warns(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys,
        "print-docker-command",
        "--image",
        "i",
        "--volume",
        "v",
        *BASE,
        "--commander-url",
        "http://127.0.0.1:8420",
    )
    assert rc == 0 and "is loopback" in err and "127.0.0.1" in out


def test_docker_volume_and_relay_root_checks(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "print-docker-command", "--image", "i", "--volume", "a:b", *BASE)
    assert rc == 2 and "--volume" in err
    rc, out, err = run(
        capsys, "print-docker-command", "--image", "i", "--volume", "v", *BASE, "--relay-root", "/data/x"
    )
    assert rc == 0 and "not under the volume mounted at /mnt" in err
    assert env_pairs(shlex.split(out), "-e")["RELAY_ROOT"] == "/data/x"


def test_printed_docker_env_passes_the_pod_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the printer emits is what the image's entrypoint accepts: `relayctl worker --check`."""
    rc, out, err = run(
        capsys,
        "print-docker-command",
        "--image",
        "i",
        "--volume",
        "v",
        "--show-secrets",
        "--relay-root",
        str(tmp_path / "r"),
        *BASE,
    )
    assert rc == 0, err
    env = env_pairs(shlex.split(out), "-e")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("relayctl")), "worker", "--check"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "check passed" in proc.stderr


def test_a_file_remote_is_mounted_at_its_path(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["print-docker-command", "--image", "i", "--volume", "/data/pod", *BASE[:4], *BASE[6:8]]
    rc, out, err = run(capsys, *common, "--remote", "file:///shared/relay remote")
    assert rc == 0, err
    argv = shlex.split(out)
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert mounts == ["/data/pod:/mnt", "/shared/relay remote:/shared/relay remote"]
    assert "every host must have it" in err
    rc, out, err = run(capsys, *common, "--remote", "file:///mnt/remote")
    assert rc == 0 and shlex.split(out).count("-v") == 1  # on the volume already
    rc, out, err = run(capsys, *common, "--remote", "file:///a:b")
    assert rc == 2 and "cannot contain ':'" in err


def test_relayctl_lists_the_print_commands() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "relayctl.py"), "print-runpod-command", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--show-secrets" in proc.stdout and "--interruptible" in proc.stdout
