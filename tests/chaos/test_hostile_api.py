"""Hostile input against a real ``relayctl serve``: the OpenAPI document fuzzed with schemathesis, path
traversal in run ids, oversized bodies, wrong or missing secrets, malformed JSON.

Each gets its clear 4xx (never a 5xx, never a traceback), and nothing is lost: a run whose lease is held
through the whole barrage keeps its holder, epoch and step, and its holder can still renew.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from relay.ids import ID_PATTERN, id_problem
from relay_testkit.commander_proc import CommanderProcess
from tests.commander.calls import cap_long_poll

SECRET = "hostile-s3cret"
KEEPER = "keeper-run-7f3a"


class Api:
    """Raw HTTP against one commander: exactly the bytes written, no client-side path normalisation."""

    def __init__(self, cmd: CommanderProcess) -> None:
        self.cmd = cmd

    def raw(self, request: bytes, *, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        with socket.create_connection((self.cmd.host, self.cmd.port), timeout=timeout_s) as sock:
            sock.sendall(request)
            data = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                    if m and len(body) >= int(m.group(1)):
                        break
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return status, headers, body

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = {"Host": f"{self.cmd.host}:{self.cmd.port}", "Connection": "close"}
        if body is not None:
            hdrs["Content-Type"] = "application/json"
            hdrs["Content-Length"] = str(len(body))
        hdrs.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        return self.raw(head.encode("latin-1") + (body or b""))

    def authed(
        self, method: str, path: str, payload: Any = None, raw_body: bytes | None = None
    ) -> tuple[int, Any]:
        body = (
            raw_body
            if raw_body is not None
            else (json.dumps(payload).encode() if payload is not None else None)
        )
        status, _, data = self.call(method, path, body, {"Authorization": f"Bearer {SECRET}"})
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data


@pytest.fixture
def api(commander_factory: Callable[..., CommanderProcess]) -> Iterator[Api]:
    # the keeper run is never renewed: its lease must outlive the whole fuzzing run, however slow the machine
    yield Api(commander_factory(secret=SECRET, lease_ttl_s=3600.0))


@pytest.fixture
def keeper(api: Api) -> dict[str, Any]:
    """A run held through the whole test: nothing hostile may change it."""
    status, grant = api.authed("POST", "/api/lease/acquire", {"run_id": KEEPER, "worker_id": "keeper-w"})
    assert status == 200, grant
    status, _ = api.authed(
        "POST",
        f"/api/runs/{KEEPER}/report",
        {"worker_id": "keeper-w", "lease_id": grant["lease_id"], "epoch": grant["epoch"], "step": 42},
    )
    assert status == 200
    return grant


def assert_keeper_intact(api: Api, grant: dict[str, Any]) -> None:
    status, run = api.authed("GET", f"/api/runs/{KEEPER}")
    assert status == 200, run
    assert (run["status"], run["holder"], run["epoch"], run["step"], run["cancel_requested"]) == (
        "running",
        "keeper-w",
        grant["epoch"],
        42,
        False,
    ), run
    status, renewed = api.authed(
        "POST",
        "/api/lease/renew",
        {"run_id": KEEPER, "worker_id": "keeper-w", "lease_id": grant["lease_id"], "epoch": grant["epoch"]},
    )
    assert status == 200 and renewed["ok"], renewed


def assert_clear_error(status: int, body: Any, *, codes: tuple[int, ...] = (400, 404, 405)) -> None:
    assert status in codes, (status, body)
    assert isinstance(body, dict) and body.get("error") and "Traceback" not in body["error"], body


# ----------------------------------------------------------------------------------------- schemathesis


def fuzz(cmd: CommanderProcess, *, headers: dict[str, str], max_examples: int) -> tuple[int, list[str]]:
    """Every documented operation, valid and invalid inputs, sent with ``headers``; every answer checked
    against the document (the document itself is fetched with the secret)."""
    schema = schemathesis.openapi.from_url(
        f"{cmd.url}/api/openapi.json", headers={"Authorization": f"Bearer {SECRET}"}
    )
    session = requests.Session()
    failures: dict[str, str] = {}
    calls = 0
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += _fuzz_operation(op, mode, cmd.url, session, headers, max_examples, failures)
    return calls, [f"{k}: {v}" for k, v in failures.items()]


def _fuzz_operation(
    op: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str],
    max_examples: int,
    failures: dict[str, str],
) -> int:
    calls = 0

    @settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        cap_long_poll(case.body)
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
        try:
            case.validate_response(response, headers=headers)
        except Exception as exc:  # noqa: BLE001 - collected: one report for every operation
            failures.setdefault(f"{op.label} [{mode.value}]", str(exc)[:1500])

    try:
        run()
    except Unsatisfiable:  # e.g. no invalid input exists for GET /api/health
        pass
    return calls


def test_schemathesis_finds_no_5xx_and_every_answer_matches_the_document(
    api: Api, keeper: dict[str, Any]
) -> None:
    auth = {"Authorization": f"Bearer {SECRET}"}
    calls, failures = fuzz(api.cmd, headers=auth, max_examples=20)
    assert not failures, "\n\n".join(failures)
    assert calls > 150
    # without the secret every protected operation is a documented 401, never anything else
    calls, failures = fuzz(api.cmd, headers={}, max_examples=3)
    assert not failures, "\n\n".join(failures)
    assert api.cmd.is_running() and "Traceback" not in api.cmd.output()
    assert_keeper_intact(api, keeper)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.one_of(st.from_regex(ID_PATTERN, fullmatch=True), st.text(alphabet="A.b_-/\\ \x00é", max_size=6)))
def test_the_documented_id_pattern_is_exactly_the_id_rule(value: str) -> None:
    """The OpenAPI pattern and relay.ids agree, so schema-valid ids are never refused and vice versa."""
    assert bool(re.fullmatch(ID_PATTERN, value)) == (id_problem(value) is None)


# ----------------------------------------------------------------------------------------- traversal

TRAVERSAL_PATHS = [
    "/api/runs/..%2F..%2Fetc%2Fpasswd",
    "/api/runs/%2e%2e",
    "/api/runs/%2E%2E/report",
    "/api/runs/..%2f..%2fcommander.db/cancel",
    "/api/runs/a%00b",
    "/api/runs/a%2Fb/report",
    "/api/runs/%2e",
    "/api/runs/../../etc/passwd",
    "/api/runs/" + "x" * 300,
    "/api/runs/%C3%A9",
]
TRAVERSAL_IDS = ["../../etc", "..", ".", "a/b", "a\\b", "/abs", "%2e%2e", "a\x00b", "x" * 129, ""]


def test_path_traversal_in_run_ids_is_refused_and_touches_nothing(
    api: Api, keeper: dict[str, Any], tmp_path: Path
) -> None:
    before_files = sorted(p.name for p in tmp_path.iterdir())
    for path in TRAVERSAL_PATHS:
        for method in ("GET", "POST"):
            body = (
                json.dumps({"worker_id": "x", "lease_id": "y", "epoch": 1, "step": 1}).encode()
                if method == "POST"
                else None
            )
            status, _, data = api.call(method, path, body, {"Authorization": f"Bearer {SECRET}"})
            assert_clear_error(status, json.loads(data))
    lease = {"lease_id": keeper["lease_id"], "epoch": keeper["epoch"]}
    for bad in TRAVERSAL_IDS:
        for path, payload in (
            ("/api/lease/acquire", {"run_id": bad, "worker_id": "w"}),
            ("/api/lease/acquire", {"run_id": "ok", "worker_id": bad}),
            ("/api/lease/renew", {"run_id": bad, "worker_id": "keeper-w", **lease}),
            ("/api/lease/release", {"run_id": bad, "worker_id": "keeper-w", **lease, "outcome": "completed"}),
            ("/api/runs/x/report", {"worker_id": bad, **lease, "step": 1}),
        ):
            status, body = api.authed("POST", path, payload)
            assert_clear_error(status, body, codes=(400,))
            assert body["code"] == "invalid_id" and body["field"] in ("run_id", "worker_id"), body
    status, runs = api.authed("GET", "/api/runs")
    assert [r["run_id"] for r in runs["runs"]] == [KEEPER]  # nothing created
    assert sorted(p.name for p in tmp_path.iterdir()) == before_files  # nothing written beside the state
    assert_keeper_intact(api, keeper)


# ----------------------------------------------------------------------------------------- size limits


def test_oversized_bodies_are_413_and_the_commander_keeps_serving(api: Api, keeper: dict[str, Any]) -> None:
    big = b'{"run_id": "big", "worker_id": "w", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    auth = {"Authorization": f"Bearer {SECRET}"}
    for path in ("/api/lease/acquire", "/api/lease/renew", f"/api/runs/{KEEPER}/report"):
        status, _, data = api.call("POST", path, big, auth)  # declared length over the limit
        assert status == 413 and json.loads(data)["code"] == "too_large", data[:300]
        # no Content-Length: chunked, the limit must still hold while reading
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(big[i : i + 65536]), big[i : i + 65536]) for i in range(0, len(big), 65536)
        )
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {SECRET}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        status, _, data = api.raw(head + chunks + b"0\r\n\r\n")
        assert status == 413, data[:300]
    # a header far over any sane size is refused by the HTTP layer, and the commander lives on
    status, _, _ = api.call("GET", "/api/runs", None, {**auth, "X-Junk": "j" * 70000})
    assert 400 <= status < 500
    status, runs = api.authed("GET", "/api/runs")
    assert status == 200 and [r["run_id"] for r in runs["runs"]] == [KEEPER]
    assert_keeper_intact(api, keeper)


# ----------------------------------------------------------------------------------------- secrets

WRONG_AUTH = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {SECRET}x"},
    {"Authorization": f"Bearer {SECRET[:-1]}"},
    {"Authorization": "Bearer "},
    {"Authorization": SECRET},
    {"Authorization": "Basic aG9zdGlsZTpzM2NyZXQ="},
    {"X-Relay-Secret": "wrong"},
    {"X-Relay-Secret": ""},
]


def test_wrong_or_missing_secrets_are_401_and_change_nothing(api: Api, keeper: dict[str, Any]) -> None:
    lease = {
        "run_id": KEEPER,
        "worker_id": "keeper-w",
        "lease_id": keeper["lease_id"],
        "epoch": keeper["epoch"],
    }
    attempts = [
        ("POST", "/api/lease/acquire", {"run_id": "stolen", "worker_id": "thief"}),
        ("POST", "/api/lease/acquire", {"run_id": KEEPER, "worker_id": "thief"}),
        (
            "POST",
            "/api/lease/release",
            {**lease, "outcome": "cancelled"},
        ),  # knows the lease id, not the secret
        ("POST", "/api/lease/renew", lease),
        (
            "POST",
            f"/api/runs/{KEEPER}/report",
            {**{k: v for k, v in lease.items() if k != "run_id"}, "step": 999},
        ),
        ("POST", f"/api/runs/{KEEPER}/cancel", None),
        ("GET", "/api/runs", None),
        ("GET", f"/api/runs/{KEEPER}", None),
        ("GET", "/api/openapi.json", None),
    ]
    for headers in WRONG_AUTH:
        for method, path, payload in attempts:
            body = (
                json.dumps(payload).encode() if payload is not None else (b"" if method == "POST" else None)
            )
            status, hdrs, data = api.call(method, path, body, headers)
            answer = json.loads(data)
            assert status == 401 and answer["code"] == "unauthorized", (headers, path, answer)
            assert hdrs.get("www-authenticate", "").startswith("Bearer") and SECRET not in data.decode()
    status, _, data = api.call("GET", "/api/health")  # health stays open
    assert status == 200 and json.loads(data)["ok"] is True
    status, runs = api.authed("GET", "/api/runs")
    assert [r["run_id"] for r in runs["runs"]] == [KEEPER]
    assert_keeper_intact(api, keeper)


# ----------------------------------------------------------------------------------------- malformed JSON

MALFORMED = [
    b"{",
    b"",
    b"not json",
    b"[1,2]",
    b'"s"',
    b"null",
    b"\xff\xfe\x00",
    b'{"run_id": "a",}',
    b"{" * 10000,
]


def test_malformed_json_is_400_naming_the_body(api: Api, keeper: dict[str, Any]) -> None:
    for path in (
        "/api/lease/acquire",
        "/api/lease/renew",
        "/api/lease/release",
        f"/api/runs/{KEEPER}/report",
    ):
        for raw in MALFORMED:
            status, body = api.authed("POST", path, raw_body=raw)
            assert_clear_error(status, body, codes=(400,))
            assert body["field"] == "body", body
    assert "Traceback" not in api.cmd.output()
    assert_keeper_intact(api, keeper)
