"""A real headless Chromium (Debian's chromium + chromedriver, installed by tools/install_browser.sh) driven
by Selenium, and the few waits and reads the dashboard tests share."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from relay_testkit.dashboard import CHROMEDRIVER, CHROMIUM, chromium_session
from relay_testkit.wait import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
MISSING = (
    None
    if CHROMIUM and CHROMEDRIVER
    else "chromium or chromedriver is not installed: tools/test.sh installs them (tools/install_browser.sh, "
    "Debian packages chromium and chromium-driver)"
)
T = TypeVar("T")


def chromium() -> Iterator[Any]:
    """One headless browser (a module-scoped fixture body), or a skip saying what is missing."""
    if MISSING:
        pytest.skip(MISSING)
    yield from chromium_session()


def until(driver: Any, cond: Callable[[], T], what: str, timeout_s: float = 20.0) -> T:
    """wait_for with the page's text and console errors in the failure message."""

    def detail() -> str:
        body = driver.execute_script("return document.body ? document.body.innerText : ''")[:1500]
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        return f"url {driver.current_url}\npage:\n{body}\nconsole errors: {errors}"

    from selenium.common.exceptions import StaleElementReferenceException

    def settled() -> T | None:
        try:
            return cond()
        except StaleElementReferenceException:  # the page redrew (or navigated) under the check: look again
            return None

    return wait_for(settled, timeout_s, what, interval_s=0.1, detail=detail)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver: Any, selector: str) -> str | None:
    found = css(driver, selector)
    return found[0].text if found else None


def screenshot(driver: Any, name: str, *, full_page: bool = True) -> Path:
    """Save the page (the whole page, or the window) as artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if not full_page:
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
        return SCREENSHOTS / f"{name}.png"
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 1000)")
    size = driver.get_window_size()
    driver.set_window_size(size["width"], min(int(height) + 40, 6000))
    path = SCREENSHOTS / f"{name}.png"
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def api(url: str, path: str, secret: str | None, body: dict[str, Any] | None = None) -> Any:
    """One call to the commander's API with the bearer token (what relayctl would do)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def requests_made(driver: Any) -> list[dict[str, Any]]:
    """Network requests the page made since the last call (Chrome's DevTools performance log)."""
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            out.append(
                {
                    "url": params["request"]["url"],
                    "type": params.get("type"),
                    "method": params["request"]["method"],
                }
            )
    return out


def run_or_none(url: str, run_id: str, secret: str | None) -> dict[str, Any] | None:
    """The run's detail, or None while it does not exist yet (a worker creates it when it acquires)."""
    import urllib.error

    try:
        return api(url, f"/api/runs/{run_id}", secret)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
