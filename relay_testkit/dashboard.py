"""What the dashboard's tests and benchmark share: many runs seeded through the API, and a headless
Chromium (Debian's chromium + chromedriver) driven by Selenium.

Importable without pytest (the benchmark runs on pods without the test extras); selenium is imported
only when a browser is asked for.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1440, 1000)


@dataclass
class Seeded:
    """What :func:`seed_runs` made: how long it took and the leases it holds (run_id, worker, lease_id, epoch)."""

    seconds: float
    held: list[tuple[str, str, str, int]] = field(default_factory=list)


def seed_runs(
    url: str, count: int, *, running: int, preempted: int, completed: int, secret: str | None = None
) -> Seeded:
    """Submit ``count`` runs through the API, then have pods take some of them.

    Runs 0..running-1 end up held (running), the next ``preempted`` handed back as preempted, the next
    ``completed`` completed; the rest wait (pending)."""
    from relay.client import CommanderClient
    from relay.schema import AcquireRequest, ReleaseRequest, RunSpec

    names = [f"run-{i:04d}" for i in range(count)]
    held: list[tuple[str, str, str, int]] = []

    async def take(client: CommanderClient, i: int, outcome: str | None) -> None:
        worker = f"pod-{i % 40:02d}"
        grant = await client.acquire(AcquireRequest(run_id=names[i], worker_id=worker))
        if outcome is None:
            held.append((names[i], worker, grant.lease_id, grant.epoch))
            return
        release = ReleaseRequest(
            run_id=names[i],
            worker_id=worker,
            lease_id=grant.lease_id,
            epoch=grant.epoch,
            outcome=outcome,
            step=i,
        )
        await client.release(release)

    async def seed() -> None:
        async with CommanderClient(url, secret, timeout_s=30) as client:
            for start in range(0, count, 100):
                batch = names[start : start + 100]
                await asyncio.gather(
                    *(client.submit_run(RunSpec(run_id=n, priority=i % 7)) for i, n in enumerate(batch))
                )
            plan = [None] * running + ["preempted"] * preempted + ["completed"] * completed
            await asyncio.gather(*(take(client, i, outcome) for i, outcome in enumerate(plan)))

    started = time.monotonic()
    asyncio.run(seed())
    return Seeded(time.monotonic() - started, held)


def chromium_session() -> Iterator[Any]:
    """A headless Chromium WebDriver (raises RuntimeError when chromium or chromedriver is missing)."""
    if not (CHROMIUM and CHROMEDRIVER):
        raise RuntimeError("chromium or chromedriver is missing (tools/install_browser.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="relay-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def render_runs_page(driver: Any, url: str, timeout_s: float = 60.0) -> dict[str, float]:
    """Open the runs page and return the page's own timing of its first full render (window.relayPerf)."""
    from relay_testkit.wait import wait_for

    driver.get(url + "/ui/")
    return wait_for(
        lambda: driver.execute_script("return window.relayPerf"), timeout_s, "the runs page's render"
    )
