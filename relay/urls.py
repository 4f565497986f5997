"""The one rule for a remote URL: ``hf://owner/repo`` (a Hugging Face Hub repo) or ``file:///abs/path``.

The worker's config, the job spec on the wire (``relay.schema``) and ``open_remote`` all call
``parse_remote_url``, so a URL one of them accepts is never refused by another later, on a pod, after
the lease was taken.  Stdlib only and outside ``relay.remote``: the schema and the config import it
without loading the remotes and the checkpoint store behind them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote


class RemoteURLError(ValueError):
    """A remote URL or Hub repo id that breaks the rule; ``str()`` says what is wrong.

    ``open_remote`` and ``HubRemote`` raise it as ``relay.remote.RemoteConfigError``, a subclass that
    is also a ``RemoteError``, so a worker opening a remote handles it with the other remote failures.
    """


#: A Hub repo id as the Hub accepts it: owner/name, each 1-96 of A-Z a-z 0-9 . _ - (and, checked apart,
#: no ".." or "--" anywhere).
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
#: The URL rule as a JSON-schema pattern, for the OpenAPI document.  It is a first pass only:
#: ``parse_remote_url`` also refuses ``..``/``--`` in a repo id and a relative file path after decoding.
REMOTE_PATTERN = r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}|file:///[^\u0000-\u001f\u007f]*)$"
EXPECTED = "expected hf://owner/repo or file:///abs/path"
_CONTROL = re.compile(r"[\u0000-\u001f\u007f]")  # a URL is one line: no control characters


@dataclass(frozen=True)
class RemoteURL:
    """A parsed remote: exactly one of ``repo_id`` (``hf``) and ``path`` (``file``) is set."""

    scheme: Literal["hf", "file"]
    repo_id: str | None = None
    path: Path | None = None


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if the Hub would accept it as owner/name; else RemoteURLError."""
    if not isinstance(repo_id, str) or not REPO_ID_RE.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise RemoteURLError(f"Hub repo id must look like owner/name (got {repo_id!r})")
    return repo_id


def parse_remote_url(url: str) -> RemoteURL:
    """Parse ``url`` (surrounding whitespace ignored); RemoteURLError (a ValueError) says what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise RemoteURLError(f"remote URL is empty ({EXPECTED})")
    url = url.strip()
    if len(url) > 2048:
        raise RemoteURLError(f"remote URL is longer than 2048 characters ({EXPECTED})")
    if _CONTROL.search(url):
        raise RemoteURLError(f"remote URL must not contain control characters (got {url!r})")
    if url.startswith("hf://"):
        try:
            return RemoteURL("hf", repo_id=check_repo_id(url[len("hf://") :]))
        except RemoteURLError:
            raise RemoteURLError(f"hf:// remote must be hf://owner/repo (got {url!r})") from None
    if url.startswith("file:"):
        if not url.startswith("file:///"):
            raise RemoteURLError(f"file remote must be file:///absolute/path, with no host (got {url!r})")
        path = unquote(url[len("file://") :])  # Path.as_uri() encodes; a hand-typed path may not
        if "\x00" in path or not path.startswith("/"):
            raise RemoteURLError(f"file remote path must be absolute (got {url!r})")
        return RemoteURL("file", path=Path(path))
    raise RemoteURLError(f"unsupported remote URL {url!r} ({EXPECTED})")
