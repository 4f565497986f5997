"""The dashboard in a real headless Chromium, against a real commander and real worker processes (the mock
trainer): login and logout, a live run, cancel, submit, a handoff on the timeline and the loss curve, a
cross-site form refused. One browser for the whole module; screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.ctl.submit import SpecFileError, parse_spec
from relay_testkit.commander_proc import CommanderProcess
from relay_testkit.dashboard import render_runs_page, seed_runs
from relay_testkit.threaded_app import ThreadedApp
from relay_testkit.wait import wait_for
from relay_testkit.workerproc import WorkerProc
from tests.ui.browser import (
    SCREENSHOTS,
    api,
    chromium,
    css,
    requests_made,
    run_or_none,
    screenshot,
    text_of,
    until,
)

SECRET = "browser-secret-4242"
TTL = 3.0
LOOP = {"max_steps": 3000, "save_steps": 50, "step_seconds": 0.05}  # runs until cancelled


@pytest.fixture(scope="module")
def driver() -> Any:
    yield from chromium()


@pytest.fixture(scope="module")
def cmd(tmp_path_factory: pytest.TempPathFactory) -> Any:
    proc = CommanderProcess(
        tmp_path_factory.mktemp("ui") / "state.db", secret=SECRET, lease_ttl_s=TTL
    ).start()
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory, cmd: Any) -> Any:
    """start(worker_id, run_id, train, remote=None): a worker process (its own volume); all killed at the end."""
    root = tmp_path_factory.mktemp("pods")
    started: list[WorkerProc] = []

    def start(worker_id: str, run_id: str, train: dict[str, Any], remote: str | None = None) -> WorkerProc:
        worker = WorkerProc(
            root / worker_id,
            commander_url=cmd.url,
            run_id=run_id,
            worker_id=worker_id,
            remote=remote,
            train=train,
            env={"RELAY_SHARED_SECRET": SECRET},
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture(scope="module")
def live_run(pods: Any, cmd: Any) -> WorkerProc:
    """A run that trains until it is cancelled (the live test watches it, the cancel test ends it)."""
    worker = pods("pod-live", "live-1", LOOP)
    wait_for(lambda: run_or_none(cmd.url, "live-1", SECRET), 30, "the live run to exist", worker.proc)
    return worker


def log_in(driver: Any, cmd: Any) -> None:
    driver.get(cmd.url + "/ui/")
    if "/ui/login" in driver.current_url:
        css(driver, "#secret")[0].send_keys(SECRET)
        css(driver, "#login-button")[0].click()
        until(
            driver,
            lambda: driver.current_url.startswith(cmd.url + "/ui/") and "login" not in driver.current_url,
            "login",
        )


def session_cookie(driver: Any) -> dict[str, Any] | None:
    return next((c for c in driver.get_cookies() if c["name"] == "relay_session"), None)


def test_login_and_logout(driver: Any, cmd: Any) -> None:
    driver.delete_all_cookies()
    driver.get(cmd.url + "/")
    until(driver, lambda: "/ui/login" in driver.current_url, "the login page")
    css(driver, "#secret")[0].send_keys("not-the-secret")
    css(driver, "#login-button")[0].click()
    until(
        driver, lambda: text_of(driver, "#login-error") == "Wrong secret.", "the wrong secret to be refused"
    )
    assert session_cookie(driver) is None
    css(driver, "#secret")[0].send_keys(SECRET)
    css(driver, "#login-button")[0].click()
    until(driver, lambda: css(driver, "#runs-table"), "the runs page")
    assert driver.current_url == cmd.url + "/ui/" and SECRET not in driver.current_url
    cookie = session_cookie(driver)
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert "relay_session" not in driver.execute_script("return document.cookie")  # no script can read it
    css(driver, "#logout")[0].click()
    until(driver, lambda: "/ui/login" in driver.current_url, "the login page after logout")
    assert session_cookie(driver) is None
    driver.get(cmd.url + "/ui/runs/anything")
    until(driver, lambda: "/ui/login" in driver.current_url, "pages to need a login again")


def test_a_live_run_appears_and_its_step_advances(driver: Any, cmd: Any, live_run: WorkerProc) -> None:
    log_in(driver, cmd)
    driver.execute_script("window.__sameDocument = 'yes'")
    requests_made(driver)  # forget the page load's requests
    row = '.run-row[data-run-id="live-1"]'
    until(driver, lambda: text_of(driver, f"{row} .col-status") == "running", "live-1 to show as running")

    def step() -> int | None:
        text = text_of(driver, f"{row} .col-step")
        return int(text) if text and text.isdigit() else None

    first = until(driver, step, "a step on the row")
    until(driver, lambda: (step() or 0) >= first + 10, "the step to advance on the page")
    assert text_of(driver, f"{row} .col-holder") == "pod-live" and text_of(driver, f"{row} .col-epoch") == "1"
    assert text_of(driver, f"{row} .col-renewed").endswith("ago")
    assert driver.execute_script("return window.__sameDocument") == "yes"  # updated in place, no reload
    calls = [r for r in requests_made(driver) if r["type"] in ("EventSource", "Fetch", "XHR", "Document")]
    assert calls == [], calls  # nothing but the one stream opened at load time (no polling, no reload)
    assert driver.execute_script("return window.relayStream.readyState") == 1  # EventSource.OPEN
    screenshot(driver, "runs-page-live")


def test_cancel_asks_first_then_stops_the_run(driver: Any, cmd: Any, live_run: WorkerProc) -> None:
    log_in(driver, cmd)
    driver.get(cmd.url + "/ui/runs/live-1")
    until(driver, lambda: text_of(driver, "#run-status") == "running", "the run page")
    css(driver, "#cancel-run")[0].click()
    until(driver, lambda: css(driver, "dialog#cancel-dialog[open]"), "the confirmation dialog")
    css(driver, "#keep-run")[0].click()
    until(driver, lambda: not css(driver, "dialog#cancel-dialog[open]"), "the dialog to close")
    assert not api(cmd.url, "/api/runs/live-1", SECRET)["cancel_requested"]  # "keep it" changed nothing
    css(driver, "#cancel-run")[0].click()
    until(driver, lambda: css(driver, "dialog#cancel-dialog[open]"), "the confirmation dialog")
    css(driver, "#confirm-cancel")[0].click()
    until(
        driver,
        lambda: "Cancel requested" in (text_of(driver, "#flash") or ""),
        "the cancel to be acknowledged",
    )
    until(driver, lambda: text_of(driver, "#run-status") == "cancelled", "the run to end as cancelled", 30)
    assert live_run.wait(30) == 0, live_run.output()
    assert not css(driver, "#cancel-run")[0].is_enabled()


BAD_SPEC = "run_id: ../bad\npriority: high\ncolour: red\ntrain:\n  learning_rte: 1\n"


def test_a_submitted_spec_lists_every_error_then_goes_through(driver: Any, cmd: Any) -> None:
    log_in(driver, cmd)
    driver.get(cmd.url + "/ui/submit")
    box = until(driver, lambda: css(driver, "#spec"), "the submit form")[0]
    driver.execute_script("arguments[0].value = arguments[1]", box, BAD_SPEC)
    css(driver, "#submit-spec")[0].click()
    until(driver, lambda: len(css(driver, "#spec-errors li")) >= 4, "the errors")
    shown = [li.text for li in css(driver, "#spec-errors li")]
    with pytest.raises(SpecFileError) as cli:  # what `relayctl submit` says of the same file
        parse_spec(BAD_SPEC, "spec")
    assert shown == cli.value.problems and len(shown) == 4
    assert "4 problems" in text_of(driver, "#submit-result")
    good = (
        "run_id: ui-submitted\npriority: 3\ntrain:\n  max_steps: 40\n  save_steps: 10\n  step_seconds: 0.05\n"
    )
    driver.execute_script("arguments[0].value = arguments[1]", box, good)
    css(driver, "#submit-spec")[0].click()
    link = until(driver, lambda: css(driver, "#submitted-link"), "the submitted run's link")[0]
    assert not css(driver, "#spec-errors li")
    link.click()
    until(driver, lambda: text_of(driver, "#run-status") == "pending", "the new run's page")
    assert api(cmd.url, "/api/runs/ui-submitted", SECRET)["priority"] == 3


def test_a_cross_site_form_cannot_cancel_a_run(driver: Any, cmd: Any) -> None:
    api(cmd.url, "/api/runs", SECRET, {"run_id": "victim"})
    log_in(driver, cmd)
    target = f"{cmd.url}/ui/api/runs/victim/cancel"

    async def evil(request: web.Request) -> web.Response:
        page = (
            f'<form id="f" method="post" action="{target}"><input name="csrf" value="guess"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", evil)
    other = ThreadedApp(app, name="evil-site").start()  # same host, another port: another origin
    try:
        driver.get(f"http://127.0.0.1:{other.port}/")
        until(driver, lambda: driver.current_url.startswith(target), "the forged form to be posted")
        body = driver.execute_script("return document.body.innerText")
        assert '"cross_site"' in body or '"csrf"' in body or '"no_session"' in body, body
    finally:
        other.stop()
    assert api(cmd.url, "/api/runs/victim", SECRET)["status"] == "pending"


def test_a_handoff_shows_two_bars_and_the_loss_curve_across_pods(
    driver: Any, cmd: Any, pods: Any, tmp_path: Path
) -> None:
    remote = f"file://{tmp_path / 'remote'}"
    train = {"max_steps": 60, "save_steps": 10, "step_seconds": 0.1}
    a = pods("pod-a", "relay-1", train, remote)
    wait_for(
        lambda: (run_or_none(cmd.url, "relay-1", SECRET) or {}).get("holder"),
        30,
        "pod-a to hold relay-1",
        a.proc,
    )
    log_in(driver, cmd)
    driver.get(cmd.url + "/ui/runs/relay-1")
    until(driver, lambda: len(css(driver, "rect.lease-bar")) == 1, "pod-a's bar")
    a.wait_event("checkpoint_synced", 30, lambda e: e.get("step", 0) >= 20)
    a.send(signal.SIGTERM)
    assert a.wait(30) == 0, a.output()
    b = pods("pod-b", "relay-1", train, remote)
    until(driver, lambda: len(css(driver, "rect.lease-bar")) == 2, "a second bar, live", 30)
    assert b.wait(60) == 0, b.output()
    until(driver, lambda: text_of(driver, "#run-status") == "completed", "the run to complete", 30)
    bars = [
        (r.get_attribute("data-worker"), r.get_attribute("data-epoch"), r.get_attribute("data-outcome"))
        for r in css(driver, "rect.lease-bar")
    ]
    assert bars == [("pod-a", "1", "preempted"), ("pod-b", "2", "completed")]

    detail = api(cmd.url, "/api/runs/relay-1?metrics=2000&events=1000", SECRET)
    expected = sum(1 for point in detail["metrics_history"] if point["metrics"].get("loss") is not None)
    drawn_js = (
        "return [...document.querySelectorAll('.chart[data-metric=\"loss\"] polyline')]"
        ".reduce((n, line) => n + line.points.numberOfItems, 0)"
    )
    until(driver, lambda: driver.execute_script(drawn_js) == expected, f"{expected} loss points on the chart")
    assert expected >= 10 and {p["epoch"] for p in detail["metrics_history"]} == {1, 2}
    assert len(css(driver, '.chart[data-metric="loss"] line.handoff')) == 1
    assert len(css(driver, '.chart[data-metric="loss"] polyline')) == 2  # one curve per pod

    lines = until(driver, lambda: css(driver, ".log-line"), "log lines")
    origins = {(line.get_attribute("data-pod"), line.get_attribute("data-epoch")) for line in lines}
    assert origins == {("pod-a", "1"), ("pod-b", "2")}, origins
    assert "synced to the remote" in text_of(driver, "#final-export")
    assert css(driver, "#ckpt-table tbody tr")
    console = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not [m for m in console if "Content Security Policy" in m or "Uncaught" in m], console
    screenshot(driver, "run-page-handoff")
    driver.get(cmd.url + "/ui/")
    until(driver, lambda: css(driver, '.run-row[data-run-id="relay-1"]'), "the runs page")
    screenshot(driver, "runs-page")


def test_an_rl_run_draws_reward_and_kl(driver: Any, cmd: Any) -> None:
    grant = api(
        cmd.url, "/api/lease/acquire", SECRET, {"run_id": "rl-1", "worker_id": "pod-rl", "mode": "rl"}
    )
    lease = {"worker_id": "pod-rl", "lease_id": grant["lease_id"], "epoch": grant["epoch"]}
    for step in range(1, 9):
        metrics = {"reward": 0.1 * step, "kl": 0.002 * step, "loss": 1.0 / step, "learning_rate": 1e-5}
        api(cmd.url, "/api/runs/rl-1/report", SECRET, {**lease, "step": step, "metrics": metrics})
    log_in(driver, cmd)
    driver.get(cmd.url + "/ui/runs/rl-1")
    shown = "return [...document.querySelectorAll('.chart')].map(c => c.dataset.metric)"
    until(
        driver,
        lambda: driver.execute_script(shown) == ["loss", "learning_rate", "reward", "kl"],
        "the RL curves",
    )
    for metric in ("reward", "kl"):
        points = driver.execute_script(
            f"return document.querySelector('.chart[data-metric=\"{metric}\"] polyline').points.numberOfItems"
        )
        assert points == 8, metric
    api(cmd.url, "/api/lease/release", SECRET, {**lease, "run_id": "rl-1", "outcome": "completed", "step": 8})
    until(driver, lambda: text_of(driver, "#run-status") == "completed", "the release to show")


def test_a_thousand_runs_render_and_filter(driver: Any, tmp_path: Path) -> None:
    """1,000 runs on the runs page; the render time is printed (and kept in artifacts/), never asserted."""
    with CommanderProcess(tmp_path / "big.db") as big:  # no secret: the dashboard opens without a login
        seeded_s = seed_runs(big.url, 1000, running=120, preempted=60, completed=40).seconds
        perf = render_runs_page(driver, big.url)
        assert perf["rows"] == 1000 and len(css(driver, "#runs-body .run-row")) == 1000
        screenshot(driver, "runs-page-1000", full_page=False)
        css(driver, 'button[data-status="running"]')[0].click()
        visible = (
            "return [...document.querySelectorAll('#runs-body .run-row')].filter(r => r.offsetParent).length"
        )
        until(
            driver, lambda: driver.execute_script(visible) == 120, "the filter to show the 120 running runs"
        )
        assert driver.current_url.endswith("/ui/?status=running")
        assert text_of(driver, "#runs-count") == "120 shown of 1000"
    figures = {
        "runs": perf["rows"],
        "build_ms": round(perf["buildMs"], 1),
        "painted_ms": round(perf["paintedMs"], 1),
        "since_navigation_ms": round(perf["sinceNavigationMs"], 1),
        "seed_s": round(seeded_s, 2),
    }
    out = SCREENSHOTS.parent / "ui-perf.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"\nruns page, {figures['runs']} runs: rows built in {figures['build_ms']} ms, painted "
        f"{figures['painted_ms']} ms after the snapshot arrived, {figures['since_navigation_ms']} ms after "
        f"navigation (budget 1000 ms) [{out}]"
    )
