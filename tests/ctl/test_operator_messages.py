"""What relayctl says when the other end is not what the operator thinks: an unreachable commander while
following logs, and a URL where something else than a commander answers."""

from __future__ import annotations

import pytest
from aiohttp import web

from relay.cli import main
from relay_testkit.threaded_app import ThreadedApp
from tests.commander.calls import closed_port


@pytest.fixture(autouse=True)
def no_commander_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMMANDER_URL", raising=False)
    monkeypatch.delenv("RELAY_SHARED_SECRET", raising=False)


def other_server(handler) -> ThreadedApp:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return ThreadedApp(app, name="not-a-commander").start()


async def nginx_404(request: web.Request) -> web.Response:
    return web.Response(status=404, text="<html><body>404 Not Found</body></html>", content_type="text/html")


async def some_json_api(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": "grafana"})


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        (nginx_404, "is not a relay commander: GET /api/health answered 404"),
        (some_json_api, "not a commander"),
    ],
)
def test_status_against_something_else_says_it_is_not_a_commander(handler, fragment, capsys) -> None:
    server = other_server(handler)
    try:
        rc = main(["status", "--commander-url", f"http://127.0.0.1:{server.port}"])
    finally:
        server.stop()
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and len(err.splitlines()) == 1, err
    assert fragment in err and "Traceback" not in err


def test_logs_follow_says_how_long_it_waits_for_an_unreachable_commander(capsys) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    rc = main(["logs", "some-run", "-f", "--commander-url", url, "--retry-s", "0.6", "--interval", "0.2"])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 1 and out == "" and len(lines) == 2, err
    assert lines[0].startswith(f"relayctl logs: commander at {url} is unreachable")
    assert lines[0].endswith("retrying every 0.2s for up to 0.6s (--retry-s)")
    assert lines[1].startswith("relayctl logs: error: ") and lines[1].endswith("(gave up after 0.6s)")


def test_logs_without_follow_does_not_wait(capsys) -> None:
    rc = main(["logs", "some-run", "--commander-url", f"http://127.0.0.1:{closed_port()}"])
    _, err = capsys.readouterr()
    assert rc == 1 and len(err.splitlines()) == 1 and "unreachable" in err and "retrying" not in err
