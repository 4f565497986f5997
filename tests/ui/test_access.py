"""Who gets into the dashboard: login and logout, sessions, CSRF, the files it serves (and those it never
serves), over real HTTP against the commander app (no browser needed; tests/ui/test_browser.py drives one)."""

from __future__ import annotations

import pytest
from aiohttp import DummyCookieJar

from relay.commander.app import API_KEY
from relay.commander.ui.sessions import COOKIE, LOGIN_COOKIE
from tests.ui.web import SECRET, Login, login, login_form, page_csrf, post_login, raw_get, set_cookie


@pytest.fixture
async def secured(make_commander):
    return await make_commander(secret=SECRET, client_options={"cookie_jar": DummyCookieJar()})


@pytest.fixture
async def open_commander(make_commander):
    return await make_commander(client_options={"cookie_jar": DummyCookieJar()})


def origin(client) -> str:
    return f"http://{client.server.host}:{client.server.port}"


async def submit_pending(client, run_id: str) -> None:
    resp = await client.post(
        "/api/runs", json={"run_id": run_id}, headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert resp.status == 201, await resp.text()


async def status_of(client, run_id: str) -> str:
    resp = await client.get(f"/api/runs/{run_id}", headers={"Authorization": f"Bearer {SECRET}"})
    return (await resp.json())["status"]


async def test_root_redirects_to_the_dashboard(secured):
    for path in ("/", "/ui"):
        resp = await secured.get(path, allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == "/ui/"


async def test_without_a_session_only_the_login_page_its_files_and_health_answer(secured):
    for path in ("/ui/", "/ui/runs/r1", "/ui/submit"):
        resp = await secured.get(path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == f"/ui/login?next={path}", path
        assert COOKIE not in resp.headers.get("Set-Cookie", "")
    for path in ("/ui/static/js/main.js", "/ui/static/js/api.js", "/ui/api/session", "/ui/api/stream"):
        resp = await secured.get(path)
        assert resp.status == 401, path
        assert "function" not in await resp.text()
    for path in ("/ui/api/runs/r1/cancel", "/ui/api/submit", "/ui/logout"):
        resp = await secured.post(path, data=b"run_id: x\n", allow_redirects=False)
        assert resp.status in (401, 303), path
        if resp.status == 303:  # logout without a session: nothing to end, back to the login page
            assert resp.headers["Location"] == "/ui/login"
    for path in ("/ui/login", "/ui/static/style.css", "/ui/static/favicon.svg", "/api/health"):
        assert (await secured.get(path)).status == 200, path
    # the API keeps its bearer token: neither a session cookie nor anything else opens it
    me = await login(secured)
    assert (await secured.get("/api/runs", headers=me.cookie)).status == 401


async def test_login_sets_a_strict_httponly_session_and_logout_ends_it(secured):
    resp = await post_login(secured, "wrong")
    assert resp.status == 401 and "Wrong secret." in await resp.text()
    assert set_cookie(resp, COOKIE) is None
    resp = await post_login(secured, SECRET, next_="/ui/runs/r1")
    assert resp.status == 303 and resp.headers["Location"] == "/ui/runs/r1"
    cookie = next(h for h in resp.headers.getall("Set-Cookie") if h.startswith(f"{COOKIE}="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert SECRET not in cookie and SECRET not in resp.headers["Location"]
    token = set_cookie(resp, COOKIE)
    csrf = await page_csrf(secured, token)
    assert SECRET not in (await (await secured.get("/ui/", headers={"Cookie": f"{COOKIE}={token}"})).text())
    # logging out needs the CSRF token too (a cross-site logout is refused), then the session is gone
    resp = await secured.post("/ui/logout", headers={"Cookie": f"{COOKIE}={token}"}, allow_redirects=False)
    assert resp.status == 403
    resp = await secured.post(
        "/ui/logout", data={"csrf": csrf}, headers={"Cookie": f"{COOKIE}={token}"}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/ui/login"
    assert any(h.startswith(f"{COOKIE}=") and "Max-Age=0" in h for h in resp.headers.getall("Set-Cookie"))
    resp = await secured.get("/ui/", headers={"Cookie": f"{COOKIE}={token}"}, allow_redirects=False)
    assert resp.status == 303  # the old cookie is worthless now, even if a browser kept it


@pytest.mark.parametrize(
    "next_", ["//evil.example/x", "https://evil.example/", "/api/runs", "/ui/\\\\evil", "javascript:alert(1)"]
)
async def test_login_never_redirects_off_the_dashboard(secured, next_):
    resp = await post_login(secured, SECRET, next_=next_)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/"


async def test_the_secret_in_a_url_logs_nobody_in(secured):
    for path in (f"/ui/login?secret={SECRET}", f"/ui/?secret={SECRET}", f"/ui/?token={SECRET}"):
        resp = await secured.get(path, allow_redirects=False)
        assert set_cookie(resp, COOKIE) is None, path
    token = await login_form(secured)
    resp = await secured.post(
        f"/ui/login?secret={SECRET}",
        data={"login_token": token, "next": "/ui/"},
        headers={"Cookie": f"{LOGIN_COOKIE}={token}"},
        allow_redirects=False,
    )
    assert resp.status == 401 and set_cookie(resp, COOKIE) is None


async def test_a_login_without_its_form_token_or_from_another_site_is_refused(secured):
    token = await login_form(secured)
    cases = [
        ({"Cookie": f"{LOGIN_COOKIE}={token}"}, {"secret": SECRET, "login_token": "forged"}),
        ({}, {"secret": SECRET, "login_token": token}),  # no login cookie: not the form we served
        (
            {"Cookie": f"{LOGIN_COOKIE}={token}", "Origin": "http://evil.example"},
            {"secret": SECRET, "login_token": token},
        ),
    ]
    for headers, form in cases:
        resp = await secured.post("/ui/login", data=form, headers=headers, allow_redirects=False)
        assert resp.status == 403 and set_cookie(resp, COOKIE) is None, (headers, form)


@pytest.mark.parametrize(
    "cookie",
    ["", "garbage", "x" * 4000, "relay_session", "../../etc/passwd", "%00", "a=b; relay_session=c"],
)
async def test_bad_session_cookies_are_refused(secured, cookie):
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    assert (await secured.get("/ui/", headers=headers, allow_redirects=False)).status == 303
    assert (await secured.get("/ui/api/stream", headers=headers)).status == 401
    assert (await secured.get("/ui/static/js/main.js", headers=headers)).status == 401


async def test_csrf_attempts_change_nothing(secured):
    await submit_pending(secured, "victim")
    me = await login(secured)
    other = await login(secured)
    url = "/ui/api/runs/victim/cancel"
    attempts = [
        me.cookie,  # no token
        {**me.cookie, "X-CSRF-Token": "forged"},
        {**me.cookie, "X-CSRF-Token": other.csrf},  # another session's token
        {**me.cookie, "X-CSRF-Token": me.csrf, "Origin": "http://evil.example"},
        {**me.cookie, "X-CSRF-Token": me.csrf, "Sec-Fetch-Site": "cross-site"},
        {**me.cookie, "X-CSRF-Token": me.csrf, "Origin": "null"},
    ]
    for headers in attempts:
        resp = await secured.post(url, headers=headers)
        assert resp.status == 403, headers
        assert (await resp.json())["code"] in ("csrf", "cross_site")
    resp = await secured.post(url, data={"csrf": "forged"}, headers=me.cookie)  # a plain form post
    assert resp.status == 403
    resp = await secured.post("/ui/api/submit", data=b"run_id: planted\n", headers=me.cookie)
    assert resp.status == 403
    assert await status_of(secured, "victim") == "pending"
    assert (
        await secured.get("/api/runs/planted", headers={"Authorization": f"Bearer {SECRET}"})
    ).status == 404
    # the real thing, from the dashboard's own page
    resp = await secured.post(url, headers={**me.cookie, "X-CSRF-Token": me.csrf, "Origin": origin(secured)})
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"


TRAVERSALS = [
    "/ui/static/../sessions.py",
    "/ui/static/%2e%2e/sessions.py",
    "/ui/static/..%2fsessions.py",
    "/ui/static/%2e%2e%2f%2e%2e%2fapp.py",
    "/ui/static/js/../../routes.py",
    "/ui/static/js/..%2f..%2fguard.py",
    "/ui/static//etc/passwd",
    "/ui/static/%2fetc%2fpasswd",
    "/ui/static/....//....//etc/passwd",
    "/ui/static/app.html",  # a template, rendered into pages, never served raw
    "/ui/static/",
    "/ui/static/js",
    "/ui/static/js/main.js%00.png",
    "/ui/static/..\\sessions.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_asset_urls_cannot_leave_the_dashboard_files(secured, path):
    me = await login(secured)
    status, body = await raw_get(secured, path, me.cookie)
    assert status in (404, 400) or (status in (301, 302, 303, 308) and not body), (status, body[:200])
    for leaked in (b"import ", b"root:", b"def ", b"{{csrf}}", b"SQLite"):
        assert leaked not in body, (path, body[:200])


async def test_assets_are_served_with_types_and_revalidation(secured):
    me = await login(secured)
    resp = await secured.get("/ui/static/js/main.js", headers=me.cookie)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/javascript")
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and "ETag" in resp.headers
    again = await secured.get(
        "/ui/static/js/main.js", headers={**me.cookie, "If-None-Match": resp.headers["ETag"]}
    )
    assert again.status == 304
    page = await secured.get("/ui/", headers=me.cookie)
    assert (
        "script-src 'self'" in page.headers["Content-Security-Policy"]
        and page.headers["X-Frame-Options"] == "DENY"
    )
    assert page.headers["Cache-Control"] == "no-store"


async def test_without_a_secret_the_dashboard_opens_but_still_wants_csrf(open_commander):
    client = open_commander
    assert (await client.get("/ui/login", allow_redirects=False)).headers["Location"] == "/ui/"
    resp = await client.get("/ui/")
    token = set_cookie(resp, COOKIE)
    assert resp.status == 200 and token
    csrf = await page_csrf(client, token)
    assert (await client.post("/api/runs", json={"run_id": "r"})).status == 201
    me = Login(token, csrf)
    assert (await client.post("/ui/api/runs/r/cancel", headers=me.cookie)).status == 403
    resp = await client.post("/ui/api/runs/r/cancel", headers={**me.cookie, "X-CSRF-Token": csrf})
    assert resp.status == 200


async def test_sessions_are_forgotten_when_the_table_is_full(secured, monkeypatch):
    from relay.commander.ui import sessions

    monkeypatch.setattr(sessions, "MAX_SESSIONS", 3)
    first = await login(secured)
    for _ in range(3):
        await login(secured)
    assert (await secured.get("/ui/", headers=first.cookie, allow_redirects=False)).status == 303
    dashboard = next(
        r.handler.__self__
        for r in secured.server.app.router.routes()
        if r.resource and r.resource.canonical == "/ui/"
    )
    assert len(dashboard.sessions) == 3 and dashboard.api is secured.server.app[API_KEY]


def test_sessions_expire_when_idle_or_old():
    from relay.commander.ui.sessions import IDLE_S, MAX_AGE_S, SessionStore

    now = [1000.0]
    store = SessionStore(clock=lambda: now[0])
    idle, busy = store.create(), store.create()
    now[0] += IDLE_S - 1
    assert store.get(busy.token) is busy
    now[0] += 2
    assert store.get(idle.token) is None and store.get(busy.token) is busy
    while now[0] < 1000.0 + MAX_AGE_S:
        now[0] += IDLE_S / 2
        store.get(busy.token)
    assert store.get(busy.token) is None
    assert store.get(None) is None and store.get("") is None and not store.drop("nope")
