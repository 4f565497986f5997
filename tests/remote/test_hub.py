"""Hub-specific behaviour, with the real huggingface_hub client against relay_testkit/hub_server.py."""

import threading
from pathlib import Path

import pytest

from relay.ckpt import RunLayout
from relay.remote import RemoteError, RemoteFencedError, Syncer, open_remote
from relay.remote.base import PullReport
from relay.remote.hub import LFS_RULE, HubRemote
from relay_testkit.hub_server import HubServer
from tests.ckpt.util import default_files, make_committed
from tests.remote.conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _remote(hub: HubServer, run_id: str = "run1", **kw) -> HubRemote:
    kw.setdefault("token", "test-token")
    return HubRemote(REPO, run_id, endpoint=hub.url, **kw)


def test_first_push_creates_a_private_repo_with_lfs_rule(hub: HubServer, tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "a", "run1")
    _remote(hub).push(make_committed(layout, 1), epoch=1)
    assert hub.repos[REPO].private
    files = hub.files(REPO)
    assert LFS_RULE in files[".gitattributes"].decode()
    assert set(files) >= {"run1/relay/state.json", "run1/checkpoints/step_00000001/manifest.json"}
    tree = hub.tree(REPO)
    assert tree["run1/checkpoints/step_00000001/config.json"].lfs  # small text file, still content-addressed


def test_one_push_is_one_commit(hub: HubServer, tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "a", "run1")
    remote = _remote(hub)
    remote.push(make_committed(layout, 1), epoch=1)
    hub.reset_stats()
    remote.push(make_committed(layout, 2), epoch=1)
    assert hub.stats.commits == 1 and hub.stats.requests["commit"] == 1


def test_head_moving_to_a_newer_epoch_fences_the_retry(hub: HubServer, tmp_path: Path) -> None:
    """Between our state read and our commit, a newer lease holder commits: the Hub answers 412,
    we re-read state.json, and the fencing check refuses."""
    zombie_layout, new_layout = RunLayout(tmp_path / "zombie", "run1"), RunLayout(tmp_path / "new", "run1")
    remote = _remote(hub)
    remote.push(make_committed(zombie_layout, 10), epoch=1)
    zombie_ckpt = make_committed(zombie_layout, 20)
    newer = make_committed(new_layout, 12)
    fired = threading.Event()

    def race(route: str) -> None:
        if route == "commit" and not fired.is_set():
            fired.set()
            _remote(hub).push(newer, epoch=2)  # lands first

    hub.reset_stats()
    hub.on_request = race
    with pytest.raises(RemoteFencedError):
        remote.push(zombie_ckpt, epoch=1)
    assert fired.is_set()
    assert hub.stats.requests["commit"] == 2  # ours (412) + the newer holder's
    state = remote.state()
    assert (state.step, state.epoch) == (12, 2)


def test_head_moving_without_a_fence_is_retried(hub: HubServer, tmp_path: Path) -> None:
    a, other = RunLayout(tmp_path / "a", "run1"), RunLayout(tmp_path / "b", "run2")
    remote = _remote(hub)
    remote.push(make_committed(a, 1), epoch=1)
    other_ckpt = make_committed(other, 1)
    fired = threading.Event()

    def race(route: str) -> None:
        if route == "commit" and not fired.is_set():
            fired.set()
            _remote(hub, "run2").push(other_ckpt, epoch=1)  # another run in the same repo

    hub.on_request = race
    result = remote.push(make_committed(a, 2), epoch=1)
    assert fired.is_set() and not result.noop and remote.state().step == 2
    assert _remote(hub, "run2").state().step == 1


def test_pull_is_pinned_to_one_revision(hub: HubServer, tmp_path: Path) -> None:
    a = RunLayout(tmp_path / "a", "run1")
    remote = _remote(hub)
    rev10 = remote.push(make_committed(a, 10), epoch=1).revision
    remote.push(make_committed(a, 20), epoch=1)
    ckpt30 = make_committed(a, 30)

    # An explicit revision: the checkpoint that was newest there.
    report = PullReport()
    old = remote.pull_newest(RunLayout(tmp_path / "b", "run1"), revision=rev10, report=report)
    assert old.step == 10 and report.revision == rev10

    # The head moves while we download: we still get the snapshot we started from, complete.
    fired = threading.Event()

    def race(route: str) -> None:
        if route == "resolve" and not fired.is_set():
            fired.set()
            _remote(hub).push(ckpt30, epoch=1)

    hub.on_request = race
    pulled = remote.pull_newest(RunLayout(tmp_path / "c", "run1"))
    assert fired.is_set() and pulled.step == 20 and remote.state().step == 30

    with pytest.raises(RemoteError, match="not found"):
        remote.pull_newest(RunLayout(tmp_path / "d", "run1"), revision="0" * 40)


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [
        ({"status": 503}, True),
        ({"status": 429, "retry_after": 7}, True),
        ({"status": None, "disconnect": True}, True),
        ({"status": 400}, False),
        ({"status": 403}, False),
    ],
)
def test_failures_are_classified(hub: HubServer, tmp_path: Path, fault: dict, retryable: bool) -> None:
    layout = RunLayout(tmp_path / "a", "run1")
    remote = _remote(hub)
    remote.push(make_committed(layout, 1), epoch=1)
    hub.add_fault("commit", **fault)
    with pytest.raises(RemoteError) as info:
        remote.push(make_committed(layout, 2), epoch=1)
    assert info.value.retryable is retryable
    assert "\n" not in str(info.value) and "hf://" in str(info.value)
    if fault.get("retry_after"):
        assert info.value.retry_after_s == 7


def test_interrupted_upload_is_completed_by_the_next_sync(hub: HubServer, tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "a", "run1")
    remote = _remote(hub)
    remote.push(make_committed(layout, 1), epoch=1)
    ckpt = make_committed(layout, 2)
    hub.reset_stats()
    hub.add_fault("commit", status=503, times=1)  # blobs uploaded, then the commit fails
    events = []
    syncer = Syncer(remote, epoch=1, base_delay_s=0.01, on_event=events.append).start()
    try:
        assert syncer.submit(ckpt)
        assert syncer.wait_idle(30)
    finally:
        syncer.stop()
    assert [e.kind for e in events] == ["failed", "synced"]
    assert events[0].retryable and events[0].retry_in_s is not None
    assert syncer.last_synced_step == 2 and syncer.last_error is None
    # every changed blob (weights, optimizer shard, trainer_state, manifest) was sent exactly once:
    # the retry found them on the Hub and sent none again
    oids = [oid for oid, _n in hub.stats.uploaded_oids]
    assert len(oids) == len(set(oids)) == 4
    assert remote.state().step == 2


def test_token_is_sent_and_a_bad_one_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    with HubServer(tmp_path / "hub", token="s3cret") as hub:
        layout = RunLayout(tmp_path / "a", "run1")
        ckpt = make_committed(layout, 1)
        with pytest.raises(RemoteError) as info:
            _remote(hub, token="wrong").push(ckpt, epoch=1)
        assert not info.value.retryable and "HF_TOKEN" in str(info.value)
        monkeypatch.setenv("HF_TOKEN", "s3cret")
        remote = open_remote("hf://relay-test/ckpts", "run1", endpoint=hub.url)
        assert remote.push(ckpt, epoch=1).files_sent == len(default_files(1)) + 1
        assert remote.pull_newest(RunLayout(tmp_path / "b", "run1")).step == 1


def test_remote_state_garbage_is_a_typed_error(hub: HubServer, tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "a", "run1")
    remote = _remote(hub)
    remote.push(make_committed(layout, 1), epoch=1)
    hub.put_file(REPO, "run1/relay/state.json", b"\x00garbage")
    with pytest.raises(RemoteError) as info:
        remote.push(make_committed(layout, 2), epoch=1)
    assert "state.json" in str(info.value) and not info.value.retryable


def test_missing_repo_without_any_token_is_not_read_as_empty(
    hub: HubServer, tmp_path: Path, monkeypatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    remote = HubRemote(REPO, "run1", endpoint=hub.url)
    with pytest.raises(RemoteError, match="HF_TOKEN"):
        remote.pull_newest(RunLayout(tmp_path / "a", "run1"))
    assert _remote(hub).pull_newest(RunLayout(tmp_path / "a", "run1")) is None  # with a token: truly empty
