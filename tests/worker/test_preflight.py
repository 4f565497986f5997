"""relay.worker.preflight: a pod that cannot carry a run is refused before it acquires anything."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from relay.config import load_config
from relay.worker import preflight as pf
from relay.worker.preflight import PreflightError, preflight, probe_writable_dir

BASE = {"COMMANDER_URL": "http://127.0.0.1:9"}


def cfg_for(tmp_path: Path, **env: str):  # type: ignore[no-untyped-def]
    return load_config(None, env={**BASE, "RELAY_ROOT": str(tmp_path / "volume"), **env})


def test_a_good_pod_passes_and_the_probes_leave_no_trace(tmp_path: Path) -> None:
    preflight(cfg_for(tmp_path, RELAY_REMOTE=f"file://{tmp_path}/remote/deep"))
    assert list(tmp_path.iterdir()) == []  # neither the volume nor the remote root was left behind


def test_an_existing_volume_keeps_what_it_had(tmp_path: Path) -> None:
    (tmp_path / "volume" / "runs" / "r1").mkdir(parents=True)
    preflight(cfg_for(tmp_path))
    assert [p.name for p in (tmp_path / "volume" / "runs").iterdir()] == ["r1"]


@pytest.mark.parametrize(
    ("root", "words"),
    [("/proc/relay-x", "No such file"), ("/etc/passwd", "Not a directory"), ("/etc/passwd/sub", "Not a")],
)
def test_an_unusable_relay_root_is_one_line(tmp_path: Path, root: str, words: str) -> None:
    with pytest.raises(PreflightError) as info:
        preflight(load_config(None, env={**BASE, "RELAY_ROOT": root}))
    msg = str(info.value)
    assert msg.startswith("config error: relay_root: ") and root in msg and words in msg and "\n" not in msg


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_a_read_only_or_full_volume_is_refused(tmp_path: Path, monkeypatch, code: int) -> None:
    real_open = os.open

    def refusing_open(path, flags, mode=0o777):  # type: ignore[no-untyped-def]
        if ".relay-probe-" in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(pf.os, "open", refusing_open)
    with pytest.raises(PreflightError, match=os.strerror(code)):
        preflight(cfg_for(tmp_path))
    assert not (tmp_path / "volume").exists()


def test_a_missing_launcher_is_one_line_naming_the_path(tmp_path: Path) -> None:
    launchers = tmp_path / "launchers"
    launchers.mkdir()
    (launchers / "launch_sft.sh").write_text("exit 0\n")
    preflight(cfg_for(tmp_path, RELAY_TRAINER_DIR=str(launchers)))  # sft is there
    with pytest.raises(PreflightError) as info:
        preflight(cfg_for(tmp_path, RELAY_TRAINER_DIR=str(launchers), MODE="rl", RUN_ID=""))
    assert str(info.value).startswith("config error: trainer_dir: the rl launcher ")
    assert str(launchers / "launch_rl.sh") in str(info.value) and "does not exist" in str(info.value)
    (launchers / "launch_rl.sh").mkdir()  # a directory is no launcher either
    with pytest.raises(PreflightError, match="is not a readable file"):
        preflight(cfg_for(tmp_path, RELAY_TRAINER_DIR=str(launchers), MODE="rl"))
    assert not (tmp_path / "volume").exists()  # the launcher is checked first


def test_the_launcher_is_resolved_like_the_session_does(tmp_path: Path) -> None:
    import trainer_blackbox

    cfg = cfg_for(tmp_path)
    assert pf.launcher_path(cfg, "rl") == Path(trainer_blackbox.__file__).resolve().parent / "launch_rl.sh"
    preflight(cfg)  # the installed launchers exist


@pytest.mark.parametrize("remote", ["file:///proc/relay-r", "file:///etc/passwd/r"])
def test_an_unwritable_file_remote_is_one_line(tmp_path: Path, remote: str) -> None:
    with pytest.raises(PreflightError) as info:
        preflight(cfg_for(tmp_path, RELAY_REMOTE=remote))
    assert str(info.value).startswith(f"config error: remote: {remote} is not writable: ")
    assert not (tmp_path / "volume").exists()


def test_hf_remotes_are_not_probed(tmp_path: Path) -> None:
    preflight(cfg_for(tmp_path, RELAY_REMOTE="hf://owner/repo", HF_TOKEN="hf_x"))


def test_probe_removes_only_what_it_created(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    probe_writable_dir(tmp_path / "a" / "b" / "c")
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and list((tmp_path / "a").iterdir()) == []
