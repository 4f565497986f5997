"""One rule for a remote URL (``relay.urls``): the worker config, the job spec on the wire and
``open_remote`` accept and refuse exactly the same URLs, so a spec the commander took is never refused
by a worker after it took the lease."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from relay.config import WorkerConfig
from relay.remote import RemoteConfigError, RemoteError, open_remote
from relay.schema import RemoteUrl
from relay.urls import REMOTE_PATTERN, RemoteURL, RemoteURLError, parse_remote_url

GOOD = {
    "hf://owner/repo": RemoteURL("hf", repo_id="owner/repo"),
    "hf://Org.1/my_repo-2": RemoteURL("hf", repo_id="Org.1/my_repo-2"),
    "  hf://owner/repo\t": RemoteURL("hf", repo_id="owner/repo"),
    "file:///mnt/ckpts": RemoteURL("file", path=Path("/mnt/ckpts")),
    "file:///mnt/my%20ckpts": RemoteURL("file", path=Path("/mnt/my ckpts")),
    "file:///mnt/my ckpts": RemoteURL("file", path=Path("/mnt/my ckpts")),
}
BAD = {
    "": "remote URL is empty",
    "s3://bucket/x": "unsupported remote URL 's3://bucket/x'",
    "https://huggingface.co/a/b": "unsupported remote URL",
    "hf://only-owner": "hf:// remote must be hf://owner/repo",
    "hf://owner/repo/": "hf:// remote must be hf://owner/repo",
    "hf://a/b/../../c": "hf:// remote must be hf://owner/repo",
    "hf://a/..b": "hf:// remote must be hf://owner/repo",
    "hf://a/b--c": "hf://owner/repo",
    "hf://" + "a" * 97 + "/b": "hf://owner/repo",
    "file://host/abs": "file remote must be file:///absolute/path, with no host",
    "file:relative/path": "file remote must be file:///absolute/path",
    "file:///mnt/a\nb": "must not contain control characters",
    "file:///mnt/a%00b": "file remote path must be absolute",
    "file:///" + "x" * 2050: "longer than 2048 characters",
}


@pytest.mark.parametrize("url", sorted(GOOD))
def test_good_urls_parse_the_same_everywhere(url: str) -> None:
    assert parse_remote_url(url) == GOOD[url]
    cfg = WorkerConfig(run_id="r", mode="sft", commander_url="http://h:1", remote=url, hf_token="hf_x")
    assert cfg.remote == url.strip()
    assert TypeAdapter(RemoteUrl).validate_python(url) == url
    remote = open_remote(url, "run1")
    assert parse_remote_url(remote.url) == GOOD[url]  # what a remote reports is a URL of itself


@pytest.mark.parametrize("url", sorted(BAD))
def test_bad_urls_are_refused_everywhere_with_the_same_reason(url: str) -> None:
    reason = BAD[url]
    with pytest.raises(RemoteURLError, match=re.escape(reason)) as info:
        parse_remote_url(url)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value).replace(repr(url), "")
    with pytest.raises(RemoteConfigError, match=re.escape(reason)) as opened:
        open_remote(url, "run1")
    assert isinstance(opened.value, RemoteError)  # a worker handles it with the other remote failures
    with pytest.raises(ValidationError) as cfg_err:
        WorkerConfig(run_id="r", mode="sft", commander_url="http://h:1", remote=url)
    assert reason in str(cfg_err.value)
    if url.strip():  # the wire model allows no empty string either, but says so in pydantic's words
        with pytest.raises(ValidationError) as wire_err:
            TypeAdapter(RemoteUrl).validate_python(url)
        errors = wire_err.value.errors()
        assert errors[0]["type"] in ("invalid_remote", "string_too_long"), errors
        if errors[0]["type"] == "invalid_remote":
            assert reason in errors[0]["msg"]


def test_openapi_pattern_is_a_first_pass_of_the_same_rule() -> None:
    # Everything the rule accepts matches the documented pattern (so generated clients never refuse a
    # URL the commander would take); the pattern may let through what the rule then refuses.
    for url in GOOD:
        assert re.fullmatch(REMOTE_PATTERN, url.strip()), url
    for url in ("s3://bucket/x", "file://host/abs", "hf://only-owner", "file:///a\nb"):
        assert not re.fullmatch(REMOTE_PATTERN, url), url


@pytest.mark.parametrize("module", ["relay.schema", "relay.config", "relay.urls"])
def test_the_rule_loads_no_remote_and_no_checkpoint_code(module: str) -> None:
    """The wire schema and the worker config validate a URL string without loading the remotes or the
    checkpoint store behind them (a fresh interpreter, so nothing else imported them first)."""
    import subprocess
    import sys

    probe = (
        f"import {module}, sys; "
        "loaded = sorted(m for m in sys.modules if m.startswith(('relay.remote', 'relay.ckpt'))); "
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert result.stdout.strip() == "", f"{module} loads {result.stdout.strip()}"
