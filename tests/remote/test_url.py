"""One rule for a remote URL (``relay.remote.url``): the worker config, the job spec on the wire and
``open_remote`` accept and refuse exactly the same URLs, so a spec the commander took is never refused
by a worker after it took the lease."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from relay.config import WorkerConfig
from relay.remote import RemoteConfigError, open_remote
from relay.remote.url import REMOTE_PATTERN, RemoteURL, parse_remote_url
from relay.schema import RemoteUrl

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
    with pytest.raises(RemoteConfigError, match=re.escape(reason)) as info:
        parse_remote_url(url)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value).replace(repr(url), "")
    with pytest.raises(RemoteConfigError, match=re.escape(reason)):
        open_remote(url, "run1")
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
