"""Lease benchmark: N simulated workers, each with its own run and lease, renewing against a real commander.

    .venv/bin/python bench/lease_bench.py                  # 1000 workers, 64 connections, 10 s of renewals
    .venv/bin/python bench/lease_bench.py --url http://127.0.0.1:8080 --secret S   # an already running commander

Phases, each over HTTP/1.1 keep-alive connections on loopback:

1. acquire: every worker acquires its own run (each grant is committed durably before it is answered);
2. renew: ``--procs`` load-generator processes share the ``--connections``; each
   connection keeps one request in flight and cycles through its workers' leases
   for ``--duration`` seconds (after ``--warmup`` seconds that are not counted);
3. renew+wait: ``--waiters`` more pods (1000) each park a long-polled acquire (``wait_s``) for one of
   the held runs on a connection of its own, and the renew phase runs again: what waiting pods cost
   the commander (target: renewals/s within 10% of phase 2, in the same run);
   then once more without them (their mean is the "none" figure: the machine's drift shows between them);
4. release: every worker releases its lease as preempted (durable again), once the waiters hung up.

It prints requests/s and p50/p99/max latency per phase, checks that every answer
was a 200, and compares with the targets (>= 5,000 renewals/s, p99 <= 50 ms).
The load generator speaks raw HTTP through asyncio protocols (a response is
parsed just enough to find its status and length) so that it costs much less
CPU than the server it measures; on a 2-core machine the generator and the
commander still share the cores, so the figures are a floor.

Exit status: 0 when every request succeeded and the targets were met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TARGET_RENEWALS_PER_S = 5000.0
TARGET_P99_MS = 50.0
TARGET_WAITING_RATIO = 0.9  # renewals/s with the waiters parked, against none


# --------------------------------------------------------------------------- raw HTTP


def build_request(host: str, path: str, body: bytes, secret: str | None) -> bytes:
    auth = f"Authorization: Bearer {secret}\r\n" if secret else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{auth}\r\n"
    )
    return head.encode() + body


class Connection(asyncio.Protocol):
    """One keep-alive connection with one request in flight; calls ``on_response(status, body)``."""

    def __init__(self, on_response: Callable[[Connection, int, bytes], None]) -> None:
        self.on_response = on_response
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at = 0.0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            at = buf.find(b"Content-Length: ", 0, end)
            if at < 0:
                at = bytes(buf[:end]).lower().find(b"content-length: ")
            line_end = buf.find(b"\r\n", at)
            length = int(buf[at + 16 : line_end])
            total = end + 4 + length
            if len(buf) < total:
                return
            status = int(buf[9:12])
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self.on_response(self, status, body)


async def open_connections(host: str, port: int, count: int, on_response: Callable) -> list[Connection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _, proto = await loop.create_connection(lambda: Connection(on_response), host, port)
        conns.append(proto)
    return conns


@dataclass
class PhaseResult:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        lat = self.latencies_ms
        return (
            f"{self.name:<8} {self.requests:>8} req in {self.seconds:6.2f}s = {self.rate:>9,.0f}/s   "
            f"p50 {self.percentile(0.50):6.2f} ms   p99 {self.percentile(0.99):6.2f} ms   "
            f"max {max(lat) if lat else float('nan'):7.2f} ms   errors {self.errors}"
        )


async def run_batch(
    host: str, port: int, requests: list[bytes], connections: int, name: str
) -> tuple[PhaseResult, list[bytes]]:
    """Send each request once over ``connections`` connections; returns the result and the bodies in order."""
    bodies: list[bytes] = [b""] * len(requests)
    latencies: list[float] = []
    errors = 0
    first_error = ""
    next_index = 0
    done = asyncio.get_running_loop().create_future()
    remaining = len(requests)
    slot: dict[Connection, int] = {}

    def send_next(conn: Connection) -> None:
        nonlocal next_index
        if next_index < len(requests):
            slot[conn] = next_index
            conn.send(requests[next_index])
            next_index += 1

    def on_response(conn: Connection, status: int, body: bytes) -> None:
        nonlocal errors, remaining, first_error
        latencies.append((time.perf_counter() - conn.sent_at) * 1000)
        bodies[slot[conn]] = body
        if status != 200:
            errors += 1
            first_error = first_error or f"{status} {body[:200]!r}"
        remaining -= 1
        if remaining == 0 and not done.done():
            done.set_result(None)
        else:
            send_next(conn)

    conns = await open_connections(host, port, min(connections, max(1, len(requests))), on_response)
    start = time.perf_counter()
    for conn in conns:
        send_next(conn)
    if requests:
        await done
    seconds = time.perf_counter() - start
    for conn in conns:
        conn.transport.close()  # type: ignore[union-attr]
    return PhaseResult(name, len(requests), errors, seconds, latencies, first_error), bodies


# --------------------------------------------------------------------------- renew load generator (subprocess)


def renew_worker(args: tuple[str, int, list[bytes], int, float, float, mp.Queue]) -> None:
    """One load-generator process: its connections cycle through its renew requests."""
    host, port, requests, connections, warmup_s, duration_s, out = args

    async def main() -> None:
        latencies = array("d")
        counted = errors = 0
        first_error = ""
        loop = asyncio.get_running_loop()
        start_count = loop.time() + warmup_s
        stop_at = start_count + duration_s
        finished = loop.create_future()
        cursor: dict[Connection, int] = {}
        open_count = 0

        def on_response(conn: Connection, status: int, body: bytes) -> None:
            nonlocal counted, errors, first_error, open_count
            now = loop.time()
            if now >= start_count:
                latencies.append((time.perf_counter() - conn.sent_at) * 1000)
                counted += 1
                if status != 200:
                    errors += 1
                    first_error = first_error or f"{status} {body[:200]!r}"
            if now >= stop_at:
                open_count -= 1
                if open_count == 0 and not finished.done():
                    finished.set_result(None)
                return
            i = cursor[conn] = cursor[conn] + 1
            conn.send(slices[conn][i % len(slices[conn])])

        conns = await open_connections(host, port, connections, on_response)
        slices: dict[Connection, list[bytes]] = {}
        for k, conn in enumerate(conns):
            part = requests[k::connections] or requests[:1]
            slices[conn] = part
            cursor[conn] = 0
        open_count = len(conns)
        for conn in conns:
            conn.send(slices[conn][0])
        await asyncio.wait_for(finished, timeout=warmup_s + duration_s + 30)
        for conn in conns:
            conn.transport.close()  # type: ignore[union-attr]
        out.put((counted, errors, duration_s, latencies.tobytes(), first_error))

    asyncio.run(main())


def run_renew_phase(
    host: str,
    port: int,
    requests: list[bytes],
    procs: int,
    connections: int,
    warmup_s: float,
    duration_s: float,
) -> PhaseResult:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    per_proc_conns = max(1, connections // procs)
    jobs = []
    for p in range(procs):
        share = requests[p::procs]
        job = ctx.Process(
            target=renew_worker, args=((host, port, share, per_proc_conns, warmup_s, duration_s, out),)
        )
        job.start()
        jobs.append(job)
    results = [out.get(timeout=warmup_s + duration_s + 60) for _ in jobs]
    for job in jobs:
        job.join(timeout=10)
    latencies: list[float] = []
    total = errors = 0
    first_error = ""
    for counted, errs, _, lat_bytes, first in results:
        total += counted
        errors += errs
        first_error = first_error or first
        arr = array("d")
        arr.frombytes(lat_bytes)
        latencies.extend(arr)
    return PhaseResult("renew", total, errors, duration_s, latencies, first_error)


# --------------------------------------------------------------------------- parked long polls (subprocess)


def waiter_proc(args: tuple[str, int, list[bytes], Any, Any]) -> None:
    """Opens one connection per request, sends each (a long-polled acquire), reports how many are sent,
    and holds them all until ``stop`` is set; then hangs up (the commander lets go of the waits)."""
    host, port, requests, ready, stop = args

    async def main() -> None:
        answered = 0

        def on_response(conn: Connection, status: int, body: bytes) -> None:
            nonlocal answered
            answered += 1  # a parked acquire should not answer while the bench runs

        conns = await open_connections(host, port, len(requests), on_response)
        for conn, req in zip(conns, requests, strict=True):
            if req:  # an empty request: the connection stays idle
                conn.send(req)
        ready.put(len(conns))
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for conn in conns:
            conn.transport.close()  # type: ignore[union-attr]
        ready.put(answered)

    asyncio.run(main())


def rss_kib(pid: int | None) -> int | None:
    """Resident memory of a process (KiB), from /proc; None when unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def parked_count(host: str, port: int, secret: str | None) -> int:
    """The commander's ``relay_acquires_waiting`` gauge."""
    import urllib.request

    req = urllib.request.Request(
        f"http://{host}:{port}/metrics", headers={"Authorization": f"Bearer {secret}"} if secret else {}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("relay_acquires_waiting "):
                return int(float(line.split()[1]))
    return 0


class Waiters:
    """``--waiters`` parked long polls in a process of their own, for the renew+wait phase."""

    def __init__(self, host: str, port: int, secret: str | None, requests: list[bytes]) -> None:
        ctx = mp.get_context("spawn")
        self.host, self.port, self.secret = host, port, secret
        self.ready: mp.Queue = ctx.Queue()
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=waiter_proc, args=((host, port, requests, self.ready, self.stop),))
        self.count = len(requests)
        self.requests = requests

    def __enter__(self) -> Waiters:
        self.proc.start()
        sent = self.ready.get(timeout=120)
        deadline = time.monotonic() + 120
        parking = sum(1 for r in self.requests if r)
        while parked_count(self.host, self.port, self.secret) < parking:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {parked_count(self.host, self.port, self.secret)} of {sent} parked")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.answered_early = self.ready.get(timeout=60)
        self.proc.join(timeout=30)
        time.sleep(0.5)  # the commander notices the hang-ups
        deadline = time.monotonic() + 60
        while parked_count(self.host, self.port, self.secret) and time.monotonic() < deadline:
            time.sleep(0.2)


def memory_cost(n: int, *, parked: bool) -> int:
    """How much resident memory ``n`` connections add to a fresh commander holding one run: idle
    keep-alive connections, or each with a long-polled acquire parked for that run."""
    from relay_testkit.commander_proc import CommanderProcess

    with tempfile.TemporaryDirectory(prefix="lease-bench-mem-") as tmp:
        with CommanderProcess(Path(tmp) / "state.db", lease_ttl_s=60.0) as cmd:
            host, port = "127.0.0.1", cmd.port
            hostport = f"{host}:{port}"
            body = json.dumps({"run_id": "held", "worker_id": "holder"}).encode()
            asyncio.run(
                run_batch(host, port, [build_request(hostport, "/api/lease/acquire", body, None)], 1, "a")
            )
            time.sleep(0.5)
            base = rss_kib(cmd.pid) or 0
            wait = json.dumps({"run_id": "held", "worker_id": "standby", "wait_s": 600}).encode()
            requests = [build_request(hostport, "/api/lease/acquire", wait, None) if parked else b""] * n
            with Waiters(host, port, None, requests):
                time.sleep(0.5)
                return (rss_kib(cmd.pid) or 0) - base


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=int, default=1000, help="simulated workers, each with its own run (1000)"
    )
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections in all (64)")
    parser.add_argument(
        "--procs", type=int, default=2, help="load-generator processes for the renew phase (2)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured renewals (10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of renewals before measuring (1)")
    parser.add_argument(
        "--waiters", type=int, default=1000, help="parked long-polled acquires in the renew+wait phase (1000)"
    )
    parser.add_argument("--url", help="benchmark this running commander instead of starting one")
    parser.add_argument("--secret", default=None, help="shared secret (default: a random one when starting)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 300 or args.workers < 1 or args.connections < 1 or args.procs < 1:
        parser.error("need --workers, --connections, --procs >= 1 and 0 < --duration <= 300")

    commander = None
    tmp = None
    secret = args.secret
    if args.url:
        url = args.url
    else:
        from relay_testkit.commander_proc import CommanderProcess

        secret = secret or os.urandom(8).hex()
        tmp = tempfile.TemporaryDirectory(prefix="lease-bench-")
        commander = CommanderProcess(Path(tmp.name) / "state.db", secret=secret, lease_ttl_s=60.0).start()
        url = commander.url
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        parser.error("the benchmark only targets loopback addresses")
    hostport = f"{host}:{port}"
    tag = os.urandom(3).hex()
    try:
        workers = [(f"bench-{tag}-{i:05d}", f"w-{tag}-{i:05d}") for i in range(args.workers)]
        acquire_reqs = [
            build_request(
                hostport, "/api/lease/acquire", json.dumps({"run_id": r, "worker_id": w}).encode(), secret
            )
            for r, w in workers
        ]
        acquired, bodies = asyncio.run(run_batch(host, port, acquire_reqs, args.connections, "acquire"))
        if acquired.errors:
            print(f"acquire failed: {acquired.first_error}", file=sys.stderr)
            return 1
        grants = [json.loads(b) for b in bodies]
        renew_reqs = [
            build_request(
                hostport,
                "/api/lease/renew",
                json.dumps(
                    {"run_id": r, "worker_id": w, "lease_id": g["lease_id"], "epoch": g["epoch"]},
                    separators=(",", ":"),
                ).encode(),
                secret,
            )
            for (r, w), g in zip(workers, grants, strict=True)
        ]
        renewed = run_renew_phase(
            host, port, renew_reqs, args.procs, args.connections, args.warmup, args.duration
        )
        wait_reqs = [
            build_request(
                hostport,
                "/api/lease/acquire",
                json.dumps(
                    {
                        "run_id": workers[i % len(workers)][0],
                        "worker_id": f"standby-{tag}-{i:05d}",
                        "wait_s": 600,
                    }
                ).encode(),
                secret,
            )
            for i in range(args.waiters)
        ]
        waiters = Waiters(host, port, secret, wait_reqs)
        with waiters:
            waiting = run_renew_phase(
                host, port, renew_reqs, args.procs, args.connections, args.warmup, args.duration
            )
        waiting.name = "renew+wait"
        again = run_renew_phase(
            host, port, renew_reqs, args.procs, args.connections, args.warmup, args.duration
        )
        again.name = "renew"  # none parked again: the machine's drift shows between the two
        release_reqs = [
            build_request(
                hostport,
                "/api/lease/release",
                json.dumps(
                    {
                        "run_id": r,
                        "worker_id": w,
                        "lease_id": g["lease_id"],
                        "epoch": g["epoch"],
                        "outcome": "preempted",
                    }
                ).encode(),
                secret,
            )
            for (r, w), g in zip(workers, grants, strict=True)
        ]
        released, _ = asyncio.run(run_batch(host, port, release_reqs, args.connections, "release"))
    finally:
        if commander is not None:
            commander.terminate()
        if tmp is not None:
            tmp.cleanup()

    print(
        f"lease bench: {args.workers} workers, {args.connections} connections, {args.procs} load process(es), "
        f"{args.duration:g}s renew phase, {args.waiters} waiters, "
        f"commander {'started by the bench' if commander else url}, {os.cpu_count()} CPU(s), "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    phases = (acquired, renewed, waiting, again, released)
    for phase in phases:
        print("  " + phase.line())
    for phase in phases:
        if phase.errors:
            print(f"  {phase.name}: {phase.errors} request(s) failed, first: {phase.first_error}")
    ok_rate = renewed.rate >= TARGET_RENEWALS_PER_S
    ok_p99 = renewed.percentile(0.99) <= TARGET_P99_MS
    none_rate = (renewed.rate + again.rate) / 2
    ratio = waiting.rate / none_rate if none_rate else 0.0
    ok_waiting = ratio >= TARGET_WAITING_RATIO and not waiters.answered_early
    errors = sum(p.errors for p in phases)
    print(
        f"  with {args.waiters} parked long polls: {waiting.rate:,.0f} renewals/s against {none_rate:,.0f} "
        f"without (mean of the phases before and after) = {ratio:.2f}x ({waiters.answered_early} answered "
        "while parked)"
    )
    if commander is not None and args.waiters:
        idle_kib, parked_kib = (memory_cost(args.waiters, parked=p) for p in (False, True))
        print(
            f"  commander memory (a fresh commander each): {args.waiters} idle connections +{idle_kib:,} KiB, "
            f"{args.waiters} parked long polls +{parked_kib:,} KiB"
        )
    print(
        f"  targets: renewals/s >= {TARGET_RENEWALS_PER_S:,.0f}: {'PASS' if ok_rate else 'FAIL'}   "
        f"renew p99 <= {TARGET_P99_MS:g} ms: {'PASS' if ok_p99 else 'FAIL'}   "
        f"waiting/none >= {TARGET_WAITING_RATIO:g}: {'PASS' if ok_waiting else 'FAIL'}   "
        f"all answers 200: {'PASS' if not errors else 'FAIL'}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    p.name: {
                        "requests": p.requests,
                        "per_s": round(p.rate, 1),
                        "p50_ms": round(p.percentile(0.5), 3),
                        "p99_ms": round(p.percentile(0.99), 3),
                        "errors": p.errors,
                        "mean_ms": round(statistics.fmean(p.latencies_ms), 3) if p.latencies_ms else None,
                    }
                    for p in (acquired, renewed, waiting, released)
                }
            )
        )
    return 0 if ok_rate and ok_p99 and ok_waiting and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
