"""The Hub look-alike itself, through the real huggingface_hub client (other helpers rely on it)."""

import json
import sys
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RevisionNotFoundError

from relay_testkit.hub_server import HubServer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def small_pages(tmp_path: Path):
    with HubServer(tmp_path / "hub", page_size=2) as hub:
        yield hub


def test_client_round_trip(small_pages: HubServer, tmp_path: Path) -> None:
    hub = small_pages
    api = HfApi(endpoint=hub.url, token="t")
    api.create_repo("me/r", private=True)
    api.create_repo("me/r", private=True, exist_ok=True)
    with pytest.raises(HfHubHTTPError):
        api.create_repo("me/r")
    big = bytes(range(256)) * 4096  # binary: LFS
    info = api.create_commit(
        "me/r",
        [
            CommitOperationAdd("a/b/w.bin", big),
            CommitOperationAdd("a/c.txt", b"hello"),
            CommitOperationAdd("d.txt", b"x"),
        ],
        commit_message="add",
    )
    assert api.repo_info("me/r").sha == info.oid == hub.head("me/r")
    assert sorted(api.list_repo_files("me/r")) == [
        ".gitattributes",
        "a/b/w.bin",
        "a/c.txt",
        "d.txt",
    ]  # paginated
    tree = {e.path: e for e in api.list_repo_tree("me/r", path_in_repo="a", recursive=True)}
    assert tree["a/b/w.bin"].lfs.sha256 and tree["a/b/w.bin"].size == len(big) and tree["a/c.txt"].lfs is None
    assert [e.path for e in api.get_paths_info("me/r", ["a/c.txt", "a/b", "nope"])] == ["a/c.txt", "a/b"]
    assert api.list_repo_refs("me/r").branches[0].target_commit == info.oid
    assert [c.title for c in api.list_repo_commits("me/r")] == ["add", "initial commit"]

    p = hf_hub_download("me/r", "a/b/w.bin", revision=info.oid, local_dir=tmp_path / "dl", endpoint=hub.url)
    assert Path(p).read_bytes() == big
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("me/r", "missing", local_dir=tmp_path / "dl", endpoint=hub.url)
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("me/r", revision="f" * 40)

    api.create_commit(
        "me/r", [CommitOperationDelete("a/")], commit_message="rm", parent_commit=hub.head("me/r")
    )
    assert sorted(hub.files("me/r")) == [".gitattributes", "d.txt"]
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(
            "me/r", [CommitOperationAdd("e", b"e")], commit_message="late", parent_commit=info.oid
        )
    assert stale.value.response.status_code == 412
    # the old revision is still readable after the delete
    assert hub.files("me/r", info.oid)["a/c.txt"] == b"hello"


def test_range_requests_and_admin_endpoints(small_pages: HubServer) -> None:
    hub = small_pages
    api = HfApi(endpoint=hub.url, token="t")
    api.create_repo("me/r")
    api.create_commit("me/r", [CommitOperationAdd("w.bin", b"\0" + bytes(range(100)))], commit_message="w")
    req = urllib.request.Request(f"{hub.url}/me/r/resolve/main/w.bin", headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206 and resp.headers["Content-Range"] == "bytes 10-19/101"
        assert resp.read() == bytes(range(9, 19))
        assert resp.headers["X-Linked-Size"] == "101" and resp.headers["X-Repo-Commit"] == hub.head("me/r")

    body = json.dumps({"route": "info", "status": 500, "times": 1}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{hub.url}/__admin/faults", data=body, method="POST"))
    with pytest.raises(HfHubHTTPError) as err:
        api.repo_info("me/r")
    assert err.value.response.status_code == 500
    stats = json.loads(urllib.request.urlopen(f"{hub.url}/__admin/stats").read())
    assert stats["faults_fired"] == [["info", 500]] and stats["requests"]["commit"] == 1


def test_standalone_process_prints_its_url(tmp_path: Path) -> None:
    import subprocess

    from tests.ckpt.util import REPO_ROOT

    proc = subprocess.Popen(
        [sys.executable, "-m", "relay_testkit.hub_server", "--data-dir", str(tmp_path / "d")],
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert json.loads(urllib.request.urlopen(f"{url}/api/whoami-v2").read())["name"]
    finally:
        proc.terminate()
        proc.wait(10)
