"""Slow-client benchmark: renew latency of real workers while thousands of hostile connections are open.

    .venv/bin/python bench/slow_clients_bench.py                        # 2,000 slow connections
    .venv/bin/python bench/slow_clients_bench.py --slow 2000 --max-connections 1000 --json

A real ``relayctl serve`` (with a shared secret) and ``--workers`` simulated workers that each hold a
lease and renew it every ``--every`` seconds for ``--duration`` seconds, each renewal on a new TCP
connection with a 5 s timeout (as ``relay.client`` does), measured from connect to the last byte.
Two phases on the same commander, printed side by side:

1. no other clients;
2. ``--slow`` unauthenticated connections that never finish their request head (a slowloris, from a
   separate process: ``relay_testkit.slow_clients``), reopened as soon as the commander closes them.

It prints renew p50/p99/max and failures for both, what the commander did to the slow connections
(answered 408 at the head deadline, 503 at the cap) and how many lines its log took.  Figures, not
assertions: exit status 1 only when a renewal failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SECRET = "bench-secret"


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


async def _renew_once(host: str, port: int, request: bytes) -> tuple[float, int]:
    """(seconds from connect to the whole answer, HTTP status or 0 on failure) for one renewal."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(5.0):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            data = await reader.read()  # Connection: close: the answer ends with EOF
            writer.close()
        status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0
    except (OSError, TimeoutError):
        status = 0
    return time.perf_counter() - started, status


async def _renewals(
    host: str, port: int, leases: list[dict[str, Any]], every_s: float, duration_s: float
) -> dict[str, Any]:
    requests = []
    for lease in leases:
        body = json.dumps(lease).encode()
        requests.append(
            f"POST /api/lease/renew HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {SECRET}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    results: list[tuple[float, int]] = []
    stop_at = time.monotonic() + duration_s

    async def worker(index: int, request: bytes) -> None:
        await asyncio.sleep(every_s * index / len(requests))  # spread the workers over the period
        while time.monotonic() < stop_at:
            results.append(await _renew_once(host, port, request))
            await asyncio.sleep(every_s)

    await asyncio.gather(*(worker(i, r) for i, r in enumerate(requests)))
    latencies = sorted(s * 1000 for s, status in results if status == 200)

    def pct(q: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)
            if latencies
            else float("nan")
        )

    return {
        "renewals": len(results),
        "failed": sum(1 for _, status in results if status != 200),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1], 2) if latencies else float("nan"),
    }


def _slow_process(host: str, port: int, count: int, ready: Any, stop: Any, out: Any) -> None:
    from relay_testkit.slow_clients import SlowClients

    slow = SlowClients(host, port, count, trickle_s=1.0).start(ready_timeout_s=120)
    ready.set()
    stop.wait()
    stats = slow.stop()
    out.put(vars(stats))


def main(argv: list[str] | None = None) -> int:
    from relay_testkit.chaos_faults import with_fd_limit
    from relay_testkit.commander_proc import CommanderProcess

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow", type=int, default=2000, help="slow unauthenticated connections (default 2000)")
    p.add_argument("--workers", type=int, default=50, help="renewing workers (default 50)")
    p.add_argument(
        "--every", type=float, default=0.25, help="seconds between a worker's renewals (default 0.25)"
    )
    p.add_argument("--duration", type=float, default=15.0, help="seconds of renewals per phase (default 15)")
    p.add_argument("--max-connections", type=int, default=None, help="the commander's --max-connections")
    p.add_argument("--header-timeout", type=float, default=None, help="the commander's --header-timeout")
    p.add_argument(
        "--commander-fd-limit",
        type=int,
        default=None,
        help="start the commander with this open-file limit (soft and hard), e.g. 1024 as on many hosts",
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)

    flags = []
    if args.max_connections is not None:
        flags += ["--max-connections", str(args.max_connections)]
    if args.header_timeout is not None:
        flags += ["--header-timeout", str(args.header_timeout)]
    workdir = Path(tempfile.mkdtemp(prefix="relay-slow-bench-"))
    limit = args.commander_fd_limit
    wrap = (lambda argv: with_fd_limit(argv, limit)) if limit else None
    cmd = CommanderProcess(workdir / "state.db", secret=SECRET, lease_ttl_s=30, extra_args=flags, wrap=wrap)
    cmd.start()
    try:
        leases = []
        for i in range(args.workers):
            grant = _post(cmd.url, "/api/lease/acquire", {"run_id": f"bench-{i}", "worker_id": f"w{i}"})
            leases.append(
                {
                    "run_id": grant["run_id"],
                    "worker_id": f"w{i}",
                    "lease_id": grant["lease_id"],
                    "epoch": grant["epoch"],
                }
            )
        log_before = len(cmd.output().splitlines())
        quiet = asyncio.run(_renewals(cmd.host, cmd.port, leases, args.every, args.duration))
        ctx = mp.get_context("spawn")
        ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_slow_process, args=(cmd.host, cmd.port, args.slow, ready, stop, out))
        proc.start()
        if not ready.wait(180):
            raise SystemExit("the slow connections did not open")
        loaded = asyncio.run(_renewals(cmd.host, cmd.port, leases, args.every, args.duration))
        stop.set()
        slow_stats = out.get(timeout=60)
        proc.join(30)
        log_lines = len(cmd.output().splitlines()) - log_before
        limits = next((ln for ln in cmd.output().splitlines() if "connections (open-file limit" in ln), "?")
    finally:
        cmd.close()
    figures = {"no_slow_clients": quiet, f"{args.slow}_slow_clients": loaded, "slow_clients": slow_stats}
    figures |= {"commander_log_lines_during_bench": log_lines, "commander_limits": limits.split(": ", 1)[-1]}
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print(f"commander: {figures['commander_limits']}")
        print(
            f"{'renew (new connection each)':<30} {'no slow clients':>18} {f'{args.slow} slow clients':>20}"
        )
        for key in ("renewals", "failed", "p50_ms", "p99_ms", "max_ms"):
            print(f"{key:<30} {quiet[key]:>18} {loaded[key]:>20}")
        ratio = loaded["p99_ms"] / quiet["p99_ms"] if quiet["p99_ms"] else float("nan")
        print(f"p99 ratio (slow / none): {ratio:.2f}")
        print(f"slow connections: {slow_stats}")
        print(f"commander log lines during the bench: {log_lines}")
    return 1 if quiet["failed"] or loaded["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
