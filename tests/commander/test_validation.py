"""Every kind of bad input: a clear 400/413/422 naming the field, never a 500, never a state change."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.commander.calls import acquire, get_run

LEASE = {"run_id": "r1", "worker_id": "w1", "lease_id": "abc", "epoch": 1}
BAD_IDS = ["../x", "..", ".", "", "a" * 129, "a/b", "a b", "é", "r1\n", "x;rm"]


async def post_raw(client, path: str, data: bytes | str, headers: dict | None = None):
    resp = await client.post(path, data=data, headers=headers or {"Content-Type": "application/json"})
    return resp.status, await resp.json()


async def raw_http(client, request_line_and_headers: str, body: bytes = b"") -> tuple[int, dict]:
    """Send bytes exactly as written (no client-side path normalisation) and parse the answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request_line_and_headers.encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    payload = await reader.readexactly(length)
    writer.close()
    return status, json.loads(payload)


@pytest.mark.parametrize(
    "path", ["/api/lease/acquire", "/api/lease/renew", "/api/lease/release", "/api/runs/r1/report"]
)
@pytest.mark.parametrize(
    ("data", "code"),
    [
        ('{"run_id": "r1",', "malformed_json"),
        ("", "malformed_json"),
        ("not json", "malformed_json"),
        ("[1, 2]", "bad_body"),
        ('"a string"', "bad_body"),
        ("null", "bad_body"),
    ],
    ids=["truncated", "empty", "garbage", "array", "string", "null"],
)
async def test_body_that_is_not_a_json_object_is_400(client, path, data, code):
    status, body = await post_raw(client, path, data)
    assert status == 400 and body["code"] == code and body["field"] == "body", body
    assert body["error"]


@pytest.mark.parametrize("field", ["run_id", "worker_id"])
@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_ids_in_bodies_are_400_naming_the_field(client, field, bad):
    payload = {"run_id": "r1", "worker_id": "w1", field: bad}
    status, body = await post_raw(client, "/api/lease/acquire", json.dumps(payload))
    assert status == 400 and body["code"] == "invalid_id" and body["field"] == field, body
    status, body = await post_raw(client, "/api/lease/renew", json.dumps({**LEASE, field: bad}))
    assert status == 400 and body["field"] == field, body


@pytest.mark.parametrize("bad", ["%2E%2E", "..", "a%2Fb", "%20x", "a" * 129, "%C3%A9"], ids=repr)
async def test_bad_ids_in_paths_are_400_even_unnormalised(client, bad):
    await acquire(client)
    for method, path in (
        ("GET", f"/api/runs/{bad}"),
        ("POST", f"/api/runs/{bad}/cancel"),
        ("POST", f"/api/runs/{bad}/report"),
    ):
        body = b"{}"
        status, answer = await raw_http(
            client,
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n",
            body,
        )
        assert status == 400, (path, status, answer)
        assert answer["field"] == "run_id" and answer["code"] == "invalid_id"
    assert (await get_run(client))["status"] == "running"


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/api/lease/acquire", {"run_id": "r1"}, "worker_id"),
        ("/api/lease/acquire", {"worker_id": 5}, "worker_id"),
        ("/api/lease/acquire", {"worker_id": "w", "mode": "pretrain"}, "mode"),
        ("/api/lease/acquire", {"worker_id": "w", "color": "red"}, "color"),
        ("/api/lease/renew", {**LEASE, "epoch": "1"}, "epoch"),
        ("/api/lease/renew", {**LEASE, "epoch": True}, "epoch"),
        ("/api/lease/renew", {**LEASE, "epoch": 1.5}, "epoch"),
        ("/api/lease/renew", {**LEASE, "epoch": -1}, "epoch"),
        ("/api/lease/renew", {**LEASE, "lease_id": ""}, "lease_id"),
        ("/api/lease/renew", {**LEASE, "lease_id": 7}, "lease_id"),
        ("/api/lease/renew", {k: v for k, v in LEASE.items() if k != "lease_id"}, "lease_id"),
        ("/api/lease/release", {**LEASE}, "outcome"),
        ("/api/lease/release", {**LEASE, "outcome": "exploded"}, "outcome"),
        ("/api/lease/release", {**LEASE, "outcome": "failed", "detail": 3}, "detail"),
        ("/api/lease/release", {**LEASE, "outcome": "failed", "detail": "x" * 9000}, "detail"),
        ("/api/runs/r1/report", {**LEASE, "step": 1}, "run_id"),  # run_id belongs in the path
        ("/api/runs/r1/report", {"worker_id": "w1", "lease_id": "a", "epoch": 1}, "step"),
        ("/api/runs/r1/report", {"worker_id": "w1", "lease_id": "a", "epoch": 1, "step": "3"}, "step"),
        (
            "/api/runs/r1/report",
            {"worker_id": "w1", "lease_id": "a", "epoch": 1, "step": 1, "metrics": {"loss": "low"}},
            "metrics.loss",
        ),
        (
            "/api/runs/r1/report",
            {"worker_id": "w1", "lease_id": "a", "epoch": 1, "step": 1, "metrics": [1]},
            "metrics",
        ),
        (
            "/api/runs/r1/report",
            {"worker_id": "w1", "lease_id": "a", "epoch": 1, "step": 1, "checkpoint": {"step": 1}},
            "checkpoint.path",
        ),
        (
            "/api/runs/r1/report",
            {
                "worker_id": "w1",
                "lease_id": "a",
                "epoch": 1,
                "step": 1,
                "checkpoint": {"step": 1, "path": "/p", "extra": 1},
            },
            "checkpoint.extra",
        ),
        (
            "/api/runs/r1/report",
            {"worker_id": "w1", "lease_id": "a", "epoch": 1, "step": 1, "event": "exploded"},
            "event",
        ),
        (
            "/api/runs/r1/report",
            {"worker_id": "w1", "lease_id": "a", "epoch": 1, "step": 1, "remote_step": -2},
            "remote_step",
        ),
        (
            "/api/runs/r1/report",
            {
                "worker_id": "w1",
                "lease_id": "a",
                "epoch": 1,
                "step": 1,
                "log_tail": [{"ts": 1.0, "stream": "tty", "line": "x"}],
            },
            "log_tail.0.stream",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_field_errors_are_422_naming_the_field(client, path, payload, field):
    _, grant = await acquire(client)
    status, body = await post_raw(client, path, json.dumps(payload))
    assert status == 422 and body["field"] == field and body["code"] == "validation_error", body
    assert body["error"].startswith(f"{field}: ")
    detail = await get_run(client)
    assert (detail["status"], detail["epoch"], detail["step"]) == ("running", 1, None)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_log_timestamps_are_422_but_nan_metrics_are_accepted(client, number):
    _, grant = await acquire(client)
    lease = f'"worker_id": "w1", "lease_id": "{grant["lease_id"]}", "epoch": {grant["epoch"]}, "step": 1'
    tail = '"log_tail": [{"ts": ' + number + ', "stream": "stdout", "line": "x"}]'
    status, body = await post_raw(client, "/api/runs/r1/report", "{" + lease + ", " + tail + "}")
    assert status == 422 and body["field"] == "log_tail.0.ts" and "finite" in body["error"], body
    assert (await get_run(client))["step"] is None  # nothing recorded
    metrics = '"metrics": {"loss": ' + number + ', "lr": 0.1}'
    status, body = await post_raw(client, "/api/runs/r1/report", "{" + lease + ", " + metrics + "}")
    assert status == 200, body  # a diverged loss is data, answered as null
    assert (await get_run(client))["step"] == 1


async def test_oversized_bodies_are_413(client):
    big = json.dumps({"worker_id": "w1", "run_id": "r1", "pad": "x" * (1024 * 1024)})
    status, body = await post_raw(client, "/api/lease/acquire", big)
    assert status == 413 and body["code"] == "too_large" and body["field"] == "body"

    async def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"x" * 65536

    resp = await client.post("/api/lease/renew", data=chunks())
    assert resp.status == 413 and (await resp.json())["code"] == "too_large"
    assert (await client.get("/api/runs")).status == 200  # and the commander is fine


async def test_a_body_just_under_the_limit_is_read_and_validated(client):
    payload = json.dumps({"worker_id": "w1", "run_id": "r1", "pad": "x" * (1024 * 1024 - 100)})
    assert len(payload) < 1024 * 1024
    status, body = await post_raw(client, "/api/lease/acquire", payload)
    assert status == 422 and body["field"] == "pad"  # unknown fields are refused, consistently


async def test_unknown_routes_and_methods_are_json(client):
    resp = await client.get("/api/nothing")
    assert resp.status == 404 and (await resp.json())["code"] == "no_route"
    resp = await client.delete("/api/runs/r1")
    assert resp.status == 405 and resp.headers["Allow"] == "GET"
    assert (await resp.json())["code"] == "method_not_allowed"
    resp = await client.get("/api/lease/renew")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"


async def test_declared_oversize_is_refused_before_reading_the_body(client):
    # Only the headers are sent: the answer must not wait for 5 MB that never come.
    head = "POST /api/lease/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
    status, body = await asyncio.wait_for(raw_http(client, head), timeout=5)
    assert status == 413 and body["code"] == "too_large"
