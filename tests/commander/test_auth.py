"""Shared-secret auth: both headers, constant-time comparison, health open, 401 changes nothing."""

from __future__ import annotations

import pytest

from relay.commander import auth as auth_module
from relay.commander.routes import ENDPOINTS
from tests.commander.calls import SECRET

OPEN = {"/api/health"}


def _concrete(path: str) -> str:
    return path.replace("{run_id}", "r1")


@pytest.fixture
async def secured(make_commander):
    return await make_commander(secret=SECRET)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": SECRET},
        {"X-Relay-Secret": "wrong"},
        {"X-Relay-Secret": ""},
    ],
    ids=["none", "wrong-bearer", "basic", "longer", "no-scheme", "wrong-legacy", "empty-legacy"],
)
async def test_every_endpoint_but_health_needs_the_secret(secured, headers):
    for ep in ENDPOINTS:
        resp = await secured.request(
            ep.method, _concrete(ep.path), json={"worker_id": "w1", "run_id": "r1"}, headers=headers
        )
        if ep.path in OPEN:
            assert resp.status == 200, ep.path
            continue
        assert resp.status == 401, (ep.path, resp.status)
        body = await resp.json()
        assert body["code"] == "unauthorized" and "Bearer" in body["error"]
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    # Nothing above created a run.
    resp = await secured.get("/api/runs", headers={"Authorization": f"Bearer {SECRET}"})
    assert (await resp.json())["runs"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {SECRET}"},
        {"Authorization": f"bearer {SECRET}"},
        {"X-Relay-Secret": SECRET},
        {"Authorization": "Bearer wrong", "X-Relay-Secret": SECRET},
        {"Authorization": f"Bearer {SECRET}", "X-Relay-Secret": "stale"},
    ],
    ids=[
        "bearer",
        "bearer-lowercase",
        "legacy-header",
        "legacy-right-bearer-wrong",
        "bearer-right-legacy-wrong",
    ],
)
async def test_the_right_secret_in_either_header_is_accepted(secured, headers):
    resp = await secured.post("/api/lease/acquire", json={"run_id": "r1", "worker_id": "w1"}, headers=headers)
    assert resp.status == 200, await resp.text()
    resp = await secured.get("/api/openapi.json", headers=headers)
    assert resp.status == 200


async def test_without_a_secret_everything_is_open(client):
    for ep in ENDPOINTS:
        resp = await client.request(ep.method, _concrete(ep.path), json={"worker_id": "w1", "run_id": "r1"})
        assert resp.status != 401, ep.path


async def test_health_is_open_and_says_version(secured):
    resp = await secured.get("/api/health")
    body = await resp.json()
    assert resp.status == 200 and body["ok"] is True and body["version"]


def test_comparison_is_constant_time(monkeypatch):
    calls = []
    real = auth_module.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    checker = auth_module.SharedSecretAuth("s3cret")
    assert checker.check({"Authorization": "Bearer s3cret"})
    assert not checker.check({"X-Relay-Secret": "nope"})
    assert not checker.check({})
    assert calls == [(b"s3cret", b"s3cret"), (b"nope", b"s3cret")]
    assert auth_module.SharedSecretAuth(None).check({}) and auth_module.SharedSecretAuth("").check({})
