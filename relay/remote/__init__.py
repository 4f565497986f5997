"""Remotes: where committed checkpoints are published so a pod elsewhere can resume.

``open_remote("file:///abs/path", run_id)`` -> FilesystemRemote;
``open_remote("hf://owner/repo", run_id, token=...)`` -> HubRemote (huggingface_hub is imported
only when a Hub call is made, so importing this package -- ``relayctl status`` -- stays light).
"""

from __future__ import annotations

from relay.ids import validate_id
from relay.remote.base import (
    PullReport,
    PushResult,
    Remote,
    RemoteAheadError,
    RemoteConfigError,
    RemoteCorruptError,
    RemoteError,
    RemoteFencedError,
    RemoteState,
    UnsafeLayoutError,
    by_url_rule,
)
from relay.remote.filesystem import FilesystemRemote
from relay.remote.hub import HubRemote
from relay.remote.sync import Syncer, SyncEvent, SyncStatus
from relay.urls import RemoteURL, parse_remote_url

__all__ = [
    "FilesystemRemote",
    "HubRemote",
    "PullReport",
    "PushResult",
    "Remote",
    "RemoteAheadError",
    "RemoteConfigError",
    "RemoteCorruptError",
    "RemoteError",
    "RemoteFencedError",
    "RemoteState",
    "RemoteURL",
    "SyncEvent",
    "SyncStatus",
    "Syncer",
    "UnsafeLayoutError",
    "open_remote",
    "parse_remote_url",
]


def open_remote(url: str, run_id: str, *, token: str | None = None, endpoint: str | None = None) -> Remote:
    """A Remote bound to ``run_id``. Raises RemoteConfigError (a ValueError) naming what is wrong,
    and InvalidIdError for a bad run id."""
    validate_id(run_id, "run_id")
    spec = by_url_rule(parse_remote_url, url)
    if spec.scheme == "hf":
        assert spec.repo_id is not None
        return HubRemote(spec.repo_id, run_id, token=token, endpoint=endpoint)
    assert spec.path is not None
    return FilesystemRemote(spec.path, run_id)
