"""The dashboard's routes: pages, login and logout, its files, its stream and its two actions.

``/`` redirects to ``/ui/``.  With a shared secret set, every page, file and call here needs a session
(``relay.commander.ui.sessions``) except the login page and the files it uses; without one, a session
is handed out on the first page, so the CSRF checks work the same.  The ``/api/*`` endpoints are not
touched: API clients keep sending the secret as a bearer token.

The two actions reuse what already exists: cancel is the API's own cancel handler, and a submitted
YAML spec is checked by ``relayctl submit``'s code (:func:`relay.ctl.submit.parse_spec`, every
problem listed) before the lease manager registers it, exactly as ``POST /api/runs`` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from relay import __version__
from relay.commander.errors import RuleError
from relay.commander.routes import ENDPOINTS
from relay.commander.ui import guard, source
from relay.commander.ui.assets import Asset, load_assets, load_template, render
from relay.commander.ui.feed import RunsFeed
from relay.commander.ui.guard import Refused
from relay.commander.ui.sessions import COOKIE, LOGIN_COOKIE, Session, SessionStore, same_token
from relay.commander.ui.source import Commander
from relay.commander.ui.stream import serve_stream
from relay.ctl.submit import SpecFileError, parse_spec
from relay.ids import id_problem

LOGIN_FAILURE_DELAY_S = 0.5
MAX_SPEC_BYTES = 256 * 1024
MAX_STREAMS = 64
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return guard.harden(web.json_response(body, status=status))


def _refused(exc: Refused) -> web.Response:
    return _json({"error": str(exc), "code": exc.code}, exc.http_status)


def _redirect(location: str) -> web.Response:
    return guard.harden(web.Response(status=303, headers={"Location": location}))


def _safe_next(value: object) -> str:
    """Where to go after login: a dashboard path only (never another site, never ``//host``)."""
    if isinstance(value, str) and value.startswith("/ui/") and "//" not in value and "\\" not in value:
        return value
    return "/ui/"


class Dashboard:
    """The dashboard of one commander: its sessions, files, feed and handlers."""

    def __init__(self, api: Commander) -> None:
        self.api = api
        self.auth_required = api.auth.enabled
        self.sessions = SessionStore()
        self.assets = load_assets()
        self.app_page = load_template("app.html")
        self.login_page = load_template("login.html")
        self.feed = RunsFeed(lambda: source.run_list(api))
        self.streams = 0
        cancel = next(ep for ep in ENDPOINTS if ep.handler == "cancel")
        self._cancel = api.wrap(dataclasses.replace(cancel, auth=False))

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/", self.root),
            web.get("/ui", self.root),
            web.get("/ui/", self.runs_page),
            web.get("/ui/runs/{run_id}", self.run_page),
            web.get("/ui/submit", self.submit_page),
            web.get("/ui/login", self.login_form),
            web.post("/ui/login", self.login),
            web.post("/ui/logout", self.logout),
            web.get("/ui/static/{name:.*}", self.static),
            web.get("/ui/api/session", self.session_info),
            web.get("/ui/api/stream", self.stream),
            web.post("/ui/api/runs/{run_id}/cancel", self.cancel),
            web.post("/ui/api/submit", self.submit),
        ]

    async def shutdown(self, _app: web.Application) -> None:
        await self.feed.close()

    # ------------------------------------------------------------------ sessions

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _api_session(self, request: web.Request) -> Session:
        session = self._session(request)
        if session is None:
            raise Refused(401, "no_session", "not logged in (or the session expired): open /ui/login")
        return session

    def _page(self, request: web.Request, page: str, title: str, **extra: str) -> web.Response:
        """A dashboard page for a valid session; the login page (or a fresh session) otherwise."""
        session, new = self._session(request), False
        if session is None:
            if self.auth_required:
                return _redirect("/ui/login?next=" + request.rel_url.path)
            session, new = self.sessions.create(), True
        body = render(
            self.app_page,
            page=page,
            title=title,
            csrf=session.csrf,
            auth="on" if self.auth_required else "off",
            version=__version__,
            run_id=extra.get("run_id", ""),
        )
        response = guard.harden(web.Response(text=body, content_type="text/html", charset="utf-8"))
        if new:
            guard.set_session_cookie(response, request, session)
        return response

    # ------------------------------------------------------------------ pages

    async def root(self, request: web.Request) -> web.StreamResponse:
        return guard.harden(web.Response(status=302, headers={"Location": "/ui/"}))

    async def runs_page(self, request: web.Request) -> web.StreamResponse:
        return self._page(request, "runs", "runs")

    async def run_page(self, request: web.Request) -> web.StreamResponse:
        run_id = request.match_info["run_id"]
        if id_problem(run_id) is not None:
            return guard.harden(web.Response(status=404, text=f"no run {run_id!r}: not a valid run id"))
        return self._page(request, "run", f"run {run_id}", run_id=run_id)

    async def submit_page(self, request: web.Request) -> web.StreamResponse:
        return self._page(request, "submit", "submit a run")

    async def static(self, request: web.Request) -> web.StreamResponse:
        asset: Asset | None = self.assets.get(request.match_info["name"])
        if asset is None:
            return guard.harden(web.Response(status=404, text="no such file"))
        if not asset.public and self.auth_required and self._session(request) is None:
            return guard.harden(web.Response(status=401, text="not logged in"))
        if request.headers.get("If-None-Match") == asset.etag:
            return guard.harden(web.Response(status=304, headers={"ETag": asset.etag}), cache=True)
        response = web.Response(
            body=asset.body, headers={"Content-Type": asset.content_type, "ETag": asset.etag}
        )
        response.headers["Cache-Control"] = "no-cache"  # revalidate: an upgraded commander serves new files
        return guard.harden(response, cache=True)

    # ------------------------------------------------------------------ login / logout

    def _login_response(self, request: web.Request, error: str = "", status: int = 200) -> web.Response:
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        body = render(
            self.login_page,
            error=error,
            login_token=token,
            next=_safe_next(request.query.get("next")),
            version=__version__,
        )
        response = guard.harden(
            web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
        )
        response.set_cookie(
            LOGIN_COOKIE, token, path="/ui/login", httponly=True, samesite="Strict", secure=request.secure
        )
        return response

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if not self.auth_required or self._session(request) is not None:
            return _redirect(_safe_next(request.query.get("next")))
        return self._login_response(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not self.auth_required:
            return _redirect("/ui/")
        try:
            guard.check_same_site(request)
        except Refused as exc:
            return guard.harden(web.Response(status=exc.http_status, text=str(exc)))
        form = await request.post()
        secret, token, nxt = form.get("secret"), form.get("login_token"), form.get("next")
        if not isinstance(token, str) or not same_token(token, request.cookies.get(LOGIN_COOKIE, "")):
            return self._login_response(request, "The login form expired: enter the secret again.", 403)
        if not isinstance(secret, str) or not self.api.auth.check({"Authorization": f"Bearer {secret}"}):
            await asyncio.sleep(LOGIN_FAILURE_DELAY_S)  # slows down guessing; the loop keeps serving
            return self._login_response(request, "Wrong secret.", 401)
        self.sessions.drop(request.cookies.get(COOKIE))
        session = self.sessions.create()
        response = _redirect(_safe_next(nxt))
        guard.set_session_cookie(response, request, session)
        response.del_cookie(LOGIN_COOKIE, path="/ui/login")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is not None:
            try:
                await guard.check_csrf(request, session)
            except Refused as exc:
                return _refused(exc)
            self.sessions.drop(session.token)
        response = _redirect("/ui/login" if self.auth_required else "/ui/")
        guard.clear_cookie(response)
        return response

    # ------------------------------------------------------------------ data

    async def session_info(self, request: web.Request) -> web.StreamResponse:
        try:
            self._api_session(request)
        except Refused as exc:
            return _refused(exc)
        return _json({"ok": True, "auth": self.auth_required, "version": __version__})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            self._api_session(request)
            run_id = request.query.get("run") or None
            if run_id is not None and id_problem(run_id) is not None:
                raise Refused(400, "invalid_id", f"run: {id_problem(run_id)}")
            if self.streams >= MAX_STREAMS:
                raise Refused(429, "too_many_streams", f"{MAX_STREAMS} dashboard streams are open already")
        except Refused as exc:
            return _refused(exc)
        self.streams += 1
        try:
            return await serve_stream(request, self.api, self.feed, run_id)
        finally:
            self.streams -= 1

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        try:
            await guard.check_csrf(request, self._api_session(request))
        except Refused as exc:
            return _refused(exc)
        return guard.harden(await self._cancel(request))

    async def submit(self, request: web.Request) -> web.StreamResponse:
        try:
            await guard.check_csrf(request, self._api_session(request))
            if (request.content_length or 0) > MAX_SPEC_BYTES:
                raise Refused(413, "too_large", f"a spec is at most {MAX_SPEC_BYTES} bytes")
            text = (await request.read()).decode("utf-8")
        except Refused as exc:
            return _refused(exc)
        except UnicodeDecodeError:
            return _json({"error": "the spec is not UTF-8 text", "code": "bad_spec", "problems": []}, 422)
        try:
            spec = parse_spec(text, "spec", validate_train=request.query.get("validate_train") != "0")
            row, created = self.api.control.submit(spec)
            await self.api.store.committed()
        except SpecFileError as exc:
            return _json({"error": str(exc), "code": "bad_spec", "problems": exc.problems}, 422)
        except RuleError as exc:
            return _json({"error": str(exc), "code": exc.code, "problems": [str(exc)]}, exc.http_status)
        body = {"run_id": row.run_id, "created": created, "status": row.status.value}
        return _json(body, 201 if created else 200)


def install(app: web.Application, api: Commander) -> Dashboard:
    """Add the dashboard's routes to the commander's app (before its catch-all 404)."""
    dashboard = Dashboard(api)
    app.router.add_routes(dashboard.routes())
    app.on_shutdown.append(dashboard.shutdown)
    return dashboard
