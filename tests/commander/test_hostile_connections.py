"""The commander under hostile clients (issue 13, point 8), with a real ``relayctl serve``: request heads and
bodies have deadlines, connections a cap, the secret is checked before a body is read, the open-file
limit is raised, accept errors are logged once in a while - and renewals keep working through a
slowloris of a few hundred connections.  Behaviour only: no timing is asserted."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from relay.commander.connections import install_accept_error_log
from relay_testkit.chaos_faults import with_fd_limit
from relay_testkit.commander_proc import CommanderProcess
from relay_testkit.slow_clients import SlowClients
from relay_testkit.wait import wait_for

SECRET = "hostile-s3cret"


def serve(tmp_path: Path, *flags: str, name: str = "state.db") -> CommanderProcess:
    return CommanderProcess(tmp_path / name, secret=SECRET, lease_ttl_s=30, extra_args=list(flags)).start()


def answer(sock: socket.socket, timeout_s: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


def api(cmd: CommanderProcess, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        cmd.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_slow_and_silent_connections_are_closed_after_the_head_deadline(tmp_path: Path) -> None:
    cmd = serve(tmp_path, "--header-timeout", "1")
    try:
        slow = [socket.create_connection((cmd.host, cmd.port)) for _ in range(20)]
        for i, sock in enumerate(slow):
            sock.sendall(b"POST /api/lease/renew HTTP/1.1\r\nHost: x\r\n" + f"X-{i}: 1\r\n".encode())
        silent = [socket.create_connection((cmd.host, cmd.port)) for _ in range(5)]
        for sock in slow:
            got = answer(sock)
            assert got.startswith(b"HTTP/1.1 408 Request Timeout") and b"Connection: close" in got, got
            sock.close()
        for sock in silent:
            assert answer(sock).startswith(b"HTTP/1.1 408"), "a connection that sent nothing was kept"
            sock.close()
        # a client that sends its head in pieces, each in time, is served
        sock = socket.create_connection((cmd.host, cmd.port))
        for piece in (b"GET /api/health HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"):
            sock.sendall(piece)
        assert answer(sock).startswith(b"HTTP/1.1 200")
        sock.close()
    finally:
        cmd.close()


def test_the_connection_cap_evicts_the_slow_first_and_then_refuses(tmp_path: Path) -> None:
    cmd = serve(tmp_path, "--header-timeout", "30", "--max-connections", "16")
    try:
        slow = [socket.create_connection((cmd.host, cmd.port)) for _ in range(16)]
        for sock in slow:
            sock.sendall(b"POST /api/lease/renew HTTP/1.1\r\n")
        # a worker arriving at the cap (accepted after them: the backlog is FIFO) takes the place of the
        # oldest slow connection
        status, grant = api(cmd, "/api/lease/acquire", {"run_id": "r1", "worker_id": "w1"})
        assert status == 200, grant
        assert answer(slow[0]).startswith(b"HTTP/1.1 408")
        for sock in slow:
            sock.close()
        # every place taken by a connection that did send a request (idle keep-alive): a new one gets 503
        kept = []
        for _ in range(16):
            sock = socket.create_connection((cmd.host, cmd.port))
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            kept.append(sock)
        extra = socket.create_connection((cmd.host, cmd.port))
        got = answer(extra)
        extra.close()
        assert got.startswith(b"HTTP/1.1 503") and b"connection limit" in got, got
        for sock in kept:
            sock.close()
        lease = {k: grant[k] for k in ("run_id", "lease_id", "epoch")} | {"worker_id": "w1"}
        wait_for(lambda: api(cmd, "/api/lease/renew", lease)[0] == 200, 10, "room again once they left")
        assert "max_connections" in cmd.output()
    finally:
        cmd.close()


def test_the_secret_is_checked_before_the_body_is_read(tmp_path: Path) -> None:
    cmd = serve(tmp_path)
    try:
        sock = socket.create_connection((cmd.host, cmd.port))
        sock.sendall(
            b"POST /api/lease/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n{"  # 50 MB announced, one byte sent
        )
        got = answer(sock)
        sock.close()
        assert got.startswith(b"HTTP/1.1 401") and b"unauthorized" in got, got[:300]
    finally:
        cmd.close()


def test_a_body_that_does_not_arrive_in_time_is_a_408(tmp_path: Path) -> None:
    cmd = serve(tmp_path, "--body-timeout", "1")
    try:
        sock = socket.create_connection((cmd.host, cmd.port))
        sock.sendall(
            b"POST /api/lease/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {SECRET}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"run_id": '
        )
        got = answer(sock)
        sock.close()
        assert got.startswith(b"HTTP/1.1 408") and b"body_timeout" in got, got
        status, _ = api(cmd, "/api/lease/acquire", {"run_id": "r1", "worker_id": "w1"})
        assert status == 200  # nothing was granted by the half request; the run is free
    finally:
        cmd.close()


def test_serve_raises_the_open_file_soft_limit_to_the_hard_one(tmp_path: Path) -> None:
    cmd = CommanderProcess(
        tmp_path / "state.db", secret=SECRET, wrap=lambda argv: with_fd_limit(argv, 2048, soft=256)
    ).start()  # started as a shell with `ulimit -Sn 256` would start it
    try:
        limits = Path(f"/proc/{cmd.pid}/limits").read_text()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert line.split()[3:5] == ["2048", "2048"], line
        assert "open-file limit 2048" in cmd.output()
    finally:
        cmd.close()


def test_renewals_keep_working_through_a_slowloris(tmp_path: Path) -> None:
    """300 never-finishing connections against a cap of 100 and a 2 s head deadline: every renewal of a
    real client (a new connection per call, as workers make) is answered 200."""
    cmd = serve(tmp_path, "--header-timeout", "2", "--max-connections", "100")
    try:
        status, grant = api(cmd, "/api/lease/acquire", {"run_id": "r1", "worker_id": "w1"})
        assert status == 200, grant
        lease = {k: grant[k] for k in ("run_id", "lease_id", "epoch")} | {"worker_id": "w1"}
        with SlowClients(cmd.host, cmd.port, 300, trickle_s=0.5) as slow:
            results = [api(cmd, "/api/lease/renew", lease)[0] for _ in range(40)]
            stats = slow.stats
        assert results == [200] * 40
        assert stats.answered_408 > 0  # the slow ones were really there, and were cut off
        log = cmd.output()
        assert log.count("max_connections") <= 4 and "Traceback" not in log, log[-3000:]
    finally:
        cmd.close()


def test_accept_errors_are_logged_once_in_a_while(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relay.commander")

    async def flood() -> None:
        loop = asyncio.get_running_loop()
        install_accept_error_log(loop)
        for _ in range(1000):  # what asyncio reports on each failed accept(2) when descriptors run out
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                }
            )

    asyncio.run(flood())
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1 and "Too many open files" in lines[0], lines
