"""Filesystem-remote specifics: crash mid-push, revisions, URL parsing, hostile ids."""

import errno
import os
from pathlib import Path

import pytest

from relay.ckpt import RunLayout
from relay.ids import InvalidIdError
from relay.remote import FilesystemRemote, RemoteConfigError, RemoteError, open_remote
from tests.ckpt.util import make_committed, run_py

KILL_MID_COPY = """
import os, signal, sys
from pathlib import Path
from relay.ckpt import read_committed
from relay.remote import open_remote
from relay.remote import filesystem as F
chunks = [0]
def hook(phase):
    if phase == "copy_chunk":
        chunks[0] += 1
        if chunks[0] == 3:  # a.bin (2 blocks of 8 MiB) is done, b.bin is half-way
            os.kill(os.getpid(), signal.SIGKILL)
F.PHASE_HOOK = hook
open_remote(sys.argv[1], "run1").push(read_committed(Path(sys.argv[2])), epoch=1)
"""


def test_interrupted_push_is_completed_by_the_next_one(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'remote'}"
    layout = RunLayout(tmp_path / "a", "run1")
    files = {"a.bin": os.urandom(10 << 20), "b.bin": os.urandom(3 << 20), "c.json": b"{}"}
    ckpt = make_committed(layout, 7, files)
    proc = run_py(KILL_MID_COPY, url, str(ckpt.path))
    assert proc.returncode == -9, proc.stderr

    remote = open_remote(url, "run1")
    assert remote.state() is None and remote.list_steps() == []  # nothing half-published
    result = remote.push(ckpt, epoch=1)
    assert result.step == 7 and remote.state().step == 7
    assert result.bytes_sent == len(files["b.bin"]) + len(files["c.json"])  # a.bin landed before the kill
    pulled = remote.pull_newest(RunLayout(tmp_path / "b", "run1"))
    assert pulled.manifest_sha256 == ckpt.manifest_sha256
    assert not list((tmp_path / "remote" / "run1" / "relay" / "tmp").glob("step_*"))


def test_resumed_stage_skips_files_already_copied(tmp_path: Path, monkeypatch) -> None:
    from relay.remote import filesystem as F

    layout = RunLayout(tmp_path / "a", "run1")
    ckpt = make_committed(layout, 3, {"big.bin": os.urandom(1 << 20), "small.bin": b"s" * 10})
    remote = open_remote(f"file://{tmp_path / 'remote'}", "run1")

    def die(phase: str) -> None:
        if phase == "before_publish":
            raise KeyboardInterrupt  # a crash after staging, before publishing

    monkeypatch.setattr(F, "PHASE_HOOK", die)
    with pytest.raises(KeyboardInterrupt):
        remote.push(ckpt, epoch=1)
    monkeypatch.setattr(F, "PHASE_HOOK", None)
    assert remote.state() is None
    result = remote.push(ckpt, epoch=1)
    assert result.bytes_sent == 0 and result.files_skipped == 3  # all staged by the first attempt
    assert remote.state().step == 3


def test_revision_is_a_counter_and_stale_revisions_are_refused(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "a", "run1")
    remote = open_remote(f"file://{tmp_path / 'remote'}", "run1")
    r1 = remote.push(make_committed(layout, 1), epoch=1).revision
    r2 = remote.push(make_committed(layout, 2), epoch=1).revision
    assert (r1, r2) == ("1", "2") and remote.state().revision == "2"
    assert remote.pull_newest(RunLayout(tmp_path / "b", "run1"), revision="2").step == 2
    with pytest.raises(RemoteError, match="revision 1 is gone"):
        remote.pull_newest(RunLayout(tmp_path / "c", "run1"), revision="1")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "s3://bucket/x",
        "file://host/abs",
        "file:relative/path",
        "hf://only-owner",
        "hf://a/b/../../c",
        "hf://../x",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(RemoteConfigError) as info:
        open_remote(url, "run1")
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


@pytest.mark.parametrize("run_id", ["..", "../x", "a/b", "", "x" * 200])
def test_hostile_run_ids_never_reach_a_path(tmp_path: Path, run_id: str) -> None:
    for url in (f"file://{tmp_path / 'remote'}", "hf://owner/repo"):
        with pytest.raises(InvalidIdError):
            open_remote(url, run_id)
    with pytest.raises(InvalidIdError):
        FilesystemRemote(tmp_path, run_id)
    assert not (tmp_path / "remote").exists()


def test_url_forms(tmp_path: Path) -> None:
    r = open_remote(f"file://{tmp_path}/with%20space", "run1")
    assert isinstance(r, FilesystemRemote) and r.root == tmp_path / "with space"
    assert r.url == (tmp_path / "with space").as_uri()  # the URL it reports opens the same directory
    assert open_remote(r.url, "run1").root == r.root
    assert open_remote(" hf://owner/repo ", "run1").url == "hf://owner/repo"


def test_pull_shows_a_progress_bar_only_on_a_terminal(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    remote = open_remote(f"file://{tmp_path / 'remote'}", "run1")
    remote.push(make_committed(RunLayout(tmp_path / "a", "run1"), 1), epoch=1)
    remote.pull_newest(RunLayout(tmp_path / "b", "run1"))
    assert "pull step 1" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    remote.pull_newest(RunLayout(tmp_path / "c", "run1"))
    assert "pull step 1" in capsys.readouterr().err


def test_fencing_is_rechecked_under_the_lock(tmp_path: Path, monkeypatch) -> None:
    """A zombie passes the early epoch check, then a newer holder publishes while the zombie is still
    copying: the check repeated under the remote lock refuses the zombie."""
    from relay.remote import RemoteFencedError
    from relay.remote import filesystem as F

    url = f"file://{tmp_path / 'remote'}"
    zombie = make_committed(RunLayout(tmp_path / "zombie", "run1"), 50)
    newer = make_committed(RunLayout(tmp_path / "newer", "run1"), 40)
    fired = []

    def newer_holder_publishes(phase: str) -> None:
        if phase == "copy_chunk" and not fired:
            fired.append(phase)
            open_remote(url, "run1").push(newer, epoch=2)

    monkeypatch.setattr(F, "PHASE_HOOK", newer_holder_publishes)
    with pytest.raises(RemoteFencedError):
        open_remote(url, "run1").push(zombie, epoch=1)
    state = open_remote(url, "run1").state()
    assert fired and (state.step, state.epoch) == (40, 2)
    assert open_remote(url, "run1").list_steps() == [40]


def test_a_remote_root_under_a_file_is_not_retryable(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "vol", "run1")
    ckpt = make_committed(layout, 3, {"w.bin": b"w"})
    (tmp_path / "afile").write_text("x")
    remote = open_remote(f"file://{tmp_path}/afile/remote", "run1")
    with pytest.raises(RemoteError) as info:
        remote.push(ckpt, epoch=1)
    assert not info.value.retryable
    msg = str(info.value)
    assert (
        "not a directory" in msg and f"{tmp_path}/afile/remote is unusable" in msg and "not retrying" in msg
    )


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (errno.EACCES, False),
        (errno.EPERM, False),
        (errno.EROFS, False),
        (errno.ENOTDIR, False),
        (errno.EIO, True),
    ],
)
def test_oserrors_that_can_never_work_are_not_retryable(tmp_path: Path, monkeypatch, code, retryable) -> None:
    from relay.remote import fs_stage

    layout = RunLayout(tmp_path / "vol", "run1")
    ckpt = make_committed(layout, 3, {"w.bin": b"w"})

    def failing_copy(fin, fout, **_kw):  # type: ignore[no-untyped-def]
        raise OSError(code, os.strerror(code), "w.bin")

    monkeypatch.setattr(fs_stage, "copy_fd_hashed", failing_copy)
    with pytest.raises(RemoteError) as info:
        open_remote(f"file://{tmp_path}/remote", "run1").push(ckpt, epoch=1)
    assert info.value.retryable is retryable and os.strerror(code) in str(info.value)


def test_enoent_is_fatal_only_when_the_roots_parent_is_missing(tmp_path: Path) -> None:
    from relay.remote.filesystem import unusable_root_problem

    gone = OSError(errno.ENOENT, "No such file or directory", "x")
    assert unusable_root_problem(gone, tmp_path / "remote") is None  # a file vanished: worth a retry
    problem = unusable_root_problem(gone, tmp_path / "unmounted" / "remote")
    assert problem is not None and f"{tmp_path / 'unmounted'} does not exist" in problem
