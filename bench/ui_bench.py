"""Dashboard benchmark: what open dashboards cost the commander's lease path, and how fast 1,000 runs render.

    .venv/bin/python bench/ui_bench.py                     # 1000 runs, 100 held leases, 4 open tabs
    .venv/bin/python bench/ui_bench.py --runs 5000 --tabs 8 --duration 10

Against a real commander subprocess seeded with ``--runs`` runs through the API:

1. renew latency of the held leases (one client renewing them in turn) with no dashboard open;
2. the same with ``--tabs`` runs-page streams open (each a server-sent-events connection that the
   commander feeds every second), and what those streams receive;
3. when chromium and chromedriver are installed: the runs page in headless Chromium, timed by the
   page itself (rows built, painted, since navigation).

It prints the figures side by side with their ratios and never fails on a figure (exit 0 unless a
request fails).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from relay_testkit.commander_proc import CommanderProcess  # noqa: E402
from relay_testkit.dashboard import CHROMEDRIVER, CHROMIUM, chromium_session, render_runs_page, seed_runs  # noqa: E402


async def renew_latencies(url: str, held: list[tuple[str, str, str, int]], duration_s: float) -> list[float]:
    """Renew the held leases in turn for ``duration_s``; every answer must be a 200. Latencies in ms."""
    import aiohttp

    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + duration_s
        i = 0
        while time.monotonic() < deadline:
            run_id, worker, lease_id, epoch = held[i % len(held)]
            body = {"run_id": run_id, "worker_id": worker, "lease_id": lease_id, "epoch": epoch}
            started = time.perf_counter()
            async with session.post(url + "/api/lease/renew", json=body) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"renew answered {resp.status}")
            out.append((time.perf_counter() - started) * 1000)
            i += 1
            await asyncio.sleep(0.005)
    return out


async def with_tabs(url: str, tabs: int, held: list, duration_s: float) -> tuple[list[float], list[int]]:
    """Renew latencies while ``tabs`` runs-page streams are open; also the bytes each stream received."""
    import aiohttp

    received = [0] * tabs
    async with aiohttp.ClientSession() as session:
        first = await session.get(url + "/ui/")
        cookie = first.cookies["relay_session"].value
        streams = [
            await session.get(url + "/ui/api/stream", headers={"Cookie": f"relay_session={cookie}"})
            for _ in range(tabs)
        ]

        async def drain(index: int) -> None:
            async for chunk in streams[index].content.iter_any():
                received[index] += len(chunk)

        readers = [asyncio.create_task(drain(i)) for i in range(tabs)]
        await asyncio.sleep(1.5)  # the first snapshots are sent; measure the steady state
        latencies = await renew_latencies(url, held, duration_s)
        for task in readers:
            task.cancel()
        for stream in streams:
            stream.close()
    return latencies, received


def summary(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {statistics.median(values):6.2f} ms  p99 {p99:6.2f} ms  max {values[-1]:6.2f} ms  (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--held", type=int, default=100, help="runs held by (simulated) pods, renewing")
    parser.add_argument("--tabs", type=int, default=4, help="open runs pages (one stream each)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of renewals per phase")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory() as tmp,
        CommanderProcess(Path(tmp) / "state.db", lease_ttl_s=120) as cmd,
    ):
        seeded = seed_runs(
            cmd.url, args.runs, running=args.held, preempted=args.held // 2, completed=args.held // 4
        )
        print(f"seeded {args.runs} runs ({args.held} held) in {seeded.seconds:.1f}s")
        alone = asyncio.run(renew_latencies(cmd.url, seeded.held, args.duration))
        watched, received = asyncio.run(with_tabs(cmd.url, args.tabs, seeded.held, args.duration))
        print(f"renew, no dashboard open     {summary(alone)}")
        print(f"renew, {args.tabs} runs pages open   {summary(watched)}")
        ratio = statistics.median(watched) / statistics.median(alone)
        p99_ratio = sorted(watched)[int(len(watched) * 0.99)] / sorted(alone)[int(len(alone) * 0.99)]
        print(f"ratio (watched / alone)       p50 x{ratio:.2f}  p99 x{p99_ratio:.2f}")
        per_tab = statistics.mean(received) / 1024
        print(
            f"stream traffic per tab        {per_tab:.1f} KiB in {args.duration + 1.5:.1f}s (first snapshot + changes)"
        )
        if CHROMIUM and CHROMEDRIVER:
            session = chromium_session()
            driver = next(session)
            try:
                figures = [render_runs_page(driver, cmd.url) for _ in range(3)]
            finally:
                session.close()
            for key, label in (
                ("buildMs", "rows built"),
                ("paintedMs", "painted"),
                ("sinceNavigationMs", "since navigation"),
            ):
                values = ", ".join(f"{f[key]:.0f}" for f in figures)
                print(
                    f"runs page, {args.runs} runs: {label:<17} {values} ms (3 loads; budget 1000 ms since navigation)"
                )
        else:
            print("runs page render: skipped (chromium or chromedriver missing; tools/install_browser.sh)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
