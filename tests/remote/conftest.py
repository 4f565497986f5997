"""Fixtures: a fresh Hub look-alike per test, and one contract-test harness for both backends."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.ckpt import CKPT_DIR_FMT
from relay.remote import FilesystemRemote, Remote, open_remote
from relay.remote.hub import HubRemote
from relay_testkit.hub_server import HubServer

REPO = "relay-test/ckpts"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer(tmp_path / "hubdata").start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Backend:
    """One remote backend plus the test-only ways to reach behind it."""

    name: str
    make: Callable[..., Remote]  # make(run_id="run1") -> Remote
    corrupt: Callable[[int, str], None]  # corrupt(step, relpath): change a remote file's bytes
    plant: Callable[[int, str, bytes], None]  # plant(step, relpath, data): write a remote file
    delete_state: Callable[[], None]
    hub: HubServer | None = None


def _fs_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "remote"

    def ckpt_dir(step: int) -> Path:
        return root / "run1" / "checkpoints" / (CKPT_DIR_FMT % step)

    def corrupt(step: int, rel: str) -> None:
        p = ckpt_dir(step) / rel
        data = bytearray(p.read_bytes())
        data[0] ^= 0xFF
        p.unlink()  # break the hardlink: only this checkpoint's copy changes
        p.write_bytes(bytes(data))

    def plant(step: int, rel: str, data: bytes) -> None:
        p = ckpt_dir(step) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            p.unlink()
        p.write_bytes(data)

    def make(run_id: str = "run1") -> Remote:
        r = open_remote(f"file://{root}", run_id)
        assert isinstance(r, FilesystemRemote)
        return r

    return Backend("fs", make, corrupt, plant, lambda: (root / "run1" / "relay" / "state.json").unlink())


def _hub_backend(hub: HubServer) -> Backend:
    def path(step: int, rel: str) -> str:
        return f"run1/checkpoints/{CKPT_DIR_FMT % step}/{rel}"

    def corrupt(step: int, rel: str) -> None:
        data = bytearray(hub.files(REPO)[path(step, rel)])
        data[0] ^= 0xFF
        hub.put_file(REPO, path(step, rel), bytes(data))

    def plant(step: int, rel: str, data: bytes) -> None:
        hub.put_file(REPO, path(step, rel), data, lfs=True)

    def delete_state() -> None:
        with hub._lock:
            repo = hub.repos[REPO]
            tree = dict(hub._commit_at(repo, "main").tree)
            del tree["run1/relay/state.json"]
            hub._new_commit(repo, "main", tree, "test: drop state", "")

    def make(run_id: str = "run1", **kw) -> Remote:
        kw.setdefault("token", "test-token")
        return HubRemote(REPO, run_id, endpoint=hub.url, **kw)

    return Backend("hub", make, corrupt, plant, delete_state, hub)


@pytest.fixture(params=["fs", "hub"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "fs":
        yield _fs_backend(tmp_path)
        return
    server = HubServer(tmp_path / "hubdata").start()
    try:
        yield _hub_backend(server)
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "hubdata", ignore_errors=True)
