"""Remotes: where committed checkpoints are published so a pod elsewhere can resume.

``open_remote("file:///abs/path", run_id)`` -> FilesystemRemote;
``open_remote("hf://owner/repo", run_id, token=...)`` -> HubRemote (huggingface_hub is imported
only when a Hub call is made, so importing this package -- ``relayctl status`` -- stays light).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from relay.ids import validate_id
from relay.remote.base import (
    PullReport,
    PushResult,
    Remote,
    RemoteConfigError,
    RemoteCorruptError,
    RemoteError,
    RemoteFencedError,
    RemoteState,
)
from relay.remote.filesystem import FilesystemRemote
from relay.remote.hub import HubRemote
from relay.remote.sync import Syncer, SyncEvent, SyncStatus

__all__ = [
    "FilesystemRemote",
    "HubRemote",
    "PullReport",
    "PushResult",
    "Remote",
    "RemoteConfigError",
    "RemoteCorruptError",
    "RemoteError",
    "RemoteFencedError",
    "RemoteState",
    "SyncEvent",
    "SyncStatus",
    "Syncer",
    "open_remote",
]


def open_remote(url: str, run_id: str, *, token: str | None = None, endpoint: str | None = None) -> Remote:
    """A Remote bound to ``run_id``. Raises RemoteConfigError (a ValueError) naming what is wrong,
    and InvalidIdError for a bad run id."""
    validate_id(run_id, "run_id")
    if not isinstance(url, str) or not url.strip():
        raise RemoteConfigError("remote URL is empty (expected file:///abs/path or hf://owner/repo)")
    url = url.strip()
    if url.startswith("hf://"):
        from relay.remote.hub import check_repo_id

        repo_id = url[len("hf://") :].strip("/")
        return HubRemote(check_repo_id(repo_id), run_id, token=token, endpoint=endpoint)
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise RemoteConfigError(f"file remote must be file:///abs/path, with no host (got {url!r})")
        path = unquote(parsed.path)
        if not path.startswith("/") or "\x00" in path:
            raise RemoteConfigError(f"file remote path must be absolute (got {url!r})")
        return FilesystemRemote(Path(path), run_id)
    raise RemoteConfigError(f"unsupported remote URL {url!r} (expected file:///abs/path or hf://owner/repo)")
