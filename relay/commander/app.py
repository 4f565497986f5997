"""The commander's HTTP face: thin aiohttp handlers over the lease manager, run control and views.

Each handler validates its input with a model from ``relay.schema``, calls one method of the
rules (``leases``, ``control``) or of the read models (``views``), and answers with another model.
The route table (``relay.commander.routes``) generates the router and the OpenAPI document, and
says which endpoints mutate: for those, :meth:`CommanderApi.wrap` answers only once the store has
committed what the handler wrote (a grant or a release is on disk before anyone hears of it), so
no handler has to remember it.

Errors never escape as a 500 with a traceback: a validation problem is a 400
(malformed JSON, a body that is not an object, a bad id) or a 422 (a missing,
unknown or mistyped field), always naming the field; a refused lease operation is
a 409 or 404 from the rules; a body over 1 MiB is a 413.

The renew handler is the hot path (every worker, every ``ttl/3`` seconds): it
parses the raw bytes with ``model_validate_json``, does a dict lookup in memory,
and answers with one of two pre-serialised bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from relay import __version__
from relay.backoff import Backoff
from relay.commander import metrics, ui
from relay.commander.answers import ApiError, error, error_answer, json_answer
from relay.commander.auth import SharedSecretAuth
from relay.commander.callbacks import CallbackDispatcher
from relay.commander.config import CallbackSettings
from relay.commander.connections import BODY_DEADLINE, body_deadline
from relay.commander.control import RunControl
from relay.commander.leases import LeaseManager
from relay.commander.openapi import build_openapi
from relay.commander.ratelog import RateLimitedLog
from relay.commander.routes import (
    ENDPOINTS,
    EVENTS_PARAM,
    JSON,
    LEASES_PARAM,
    LIMIT_PARAM,
    METRICS_PARAM,
    SINCE_PARAM,
    TAIL_PARAM,
    Endpoint,
    QueryParam,
)
from relay.commander.store import Store, StoreError
from relay.commander.views import RunViews
from relay.commander.wakeups import Wakeups
from relay.ids import id_problem
from relay.schema import (
    AcquireGranted,
    AcquireRequest,
    HealthResponse,
    ReleaseRequest,
    ReleaseResponse,
    RenewRequest,
    RenewResponse,
    ReportRequest,
    ReportResponse,
    RunList,
    RunSpec,
)

log = logging.getLogger("relay.commander")

MAX_BODY_BYTES = 1024 * 1024
#: how the lease sweeper slows down while the store's commits fail (each sweep would fail the same way)
STORE_BACKOFF = Backoff(0.5, 10.0)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _path_id(request: web.Request, name: str = "run_id") -> str:
    value = request.match_info[name]
    reason = id_problem(value)
    if reason is not None:
        raise ApiError(400, "invalid_id", f"{name}: {reason} (got {value!r})", name)
    return value


def _query_int(request: web.Request, param: QueryParam) -> int:
    name, low, high = param.name, param.low, param.high
    raw = request.query.get(name)
    if raw is None:
        return param.default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "validation_error", f"{name}: must be an integer (got {raw!r})", name) from None
    if not low <= value <= high:
        raise ApiError(400, "validation_error", f"{name}: must be between {low} and {high}", name)
    return value


async def _body(request: web.Request) -> bytes:
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body is {length} bytes; the limit is {MAX_BODY_BYTES}", "body")
    deadline = request.get(BODY_DEADLINE)  # set by the body_deadline middleware
    try:
        async with asyncio.timeout_at(deadline):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"body is over the {MAX_BODY_BYTES} byte limit", "body") from None
    except TimeoutError:
        raise ApiError(408, "body_timeout", "the request body did not arrive in time", "body") from None


class CommanderApi:
    """The handlers, bound to one lease manager and one auth policy."""

    def __init__(
        self,
        leases: LeaseManager,
        auth: SharedSecretAuth,
        *,
        sweep_interval_s: float | None = None,
        callbacks: CallbackDispatcher | None = None,
    ) -> None:
        self.leases = leases
        self.store = leases.store
        if not isinstance(leases.watch, Wakeups):  # create_app attaches it before load(); else now
            leases.watch = Wakeups(leases)
        self.wakeups: Wakeups = leases.watch
        self.control = RunControl(leases)
        self.views = RunViews(leases, callbacks)
        self.auth = auth
        self.callbacks = callbacks
        self.registry = metrics.build_registry(leases, callbacks)
        self.store_log = RateLimitedLog(log, every_s=30.0)
        self.sweep_interval_s = sweep_interval_s or min(1.0, leases.ttl_s / 4)
        ttl = leases.ttl_s
        # The two possible renew answers, serialised once from the model.
        self._renew_bodies = {
            flag: RenewResponse(ok=True, ttl_s=ttl, cancel_requested=flag).model_dump_json().encode()
            for flag in (False, True)
        }
        self._openapi_body = json.dumps(build_openapi()).encode()
        self._known_paths = [(re.compile(_path_regex(ep.path)), ep.method) for ep in ENDPOINTS]

    # ------------------------------------------------------------------ wiring

    def wrap(self, endpoint: Endpoint) -> Handler:
        """Auth, the error mapping and, for an endpoint that mutates, the commit, around one handler.

        A mutating endpoint answers - whatever the answer - only once everything written so far is
        committed (``Store.committed``: fsynced when durable); a commit that fails turns the answer
        into a 503, since what it reported was rolled back.
        """
        fn: Handler = getattr(self, endpoint.handler)
        check = self.auth.check if endpoint.auth and self.auth.enabled else None

        async def handler(request: web.Request) -> web.StreamResponse:
            if check is not None and not check(request.headers):
                return error(
                    401,
                    "unauthorized",
                    "missing or wrong shared secret: send 'Authorization: Bearer <secret>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                response = await fn(request)
            except Exception as exc:
                response = error_answer(endpoint, request, exc, self.store_log)
            if endpoint.mutates:
                try:
                    await self.store.committed()
                except StoreError as exc:
                    return error_answer(endpoint, request, exc, self.store_log)
            return response

        handler.__name__ = endpoint.handler
        return handler

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """JSON 404/405 for anything outside :data:`ENDPOINTS`."""
        allowed = sorted({method for regex, method in self._known_paths if regex.fullmatch(request.path)})
        if allowed:
            return error(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return error(404, "no_route", f"no endpoint {request.method} {request.path}")

    async def sweeper(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: end expired leases in the background, so waiting runs show up promptly."""

        async def loop() -> None:
            failing = 0  # sweeps in a row that met a store whose last commit failed: back off
            while True:
                await asyncio.sleep(STORE_BACKOFF.delay(failing) if failing else self.sweep_interval_s)
                failing = failing + 1 if self.store.commit_error is not None else 0
                try:
                    self.leases.expire_due()
                except Exception:
                    log.exception("lease sweeper failed; retrying")

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def commit_failed(self, exc: BaseException) -> None:
        """A batch failed to commit and was rolled back: memory follows the disk again (no lease gains
        time from it, see ``LeaseManager.resync``), and the operator hears of it once in a while."""
        self.leases.resync()
        self.store_log.log(
            logging.ERROR,
            "commit",
            "%s; live leases are renewed from memory, grants and releases are answered 503 until a "
            "commit succeeds",
            exc,
        )

    def commits_again(self) -> None:
        log.info("state store commits again")
        self.store_log.forget("commit")
        self.store_log.forget("store")

    # ------------------------------------------------------------------ handlers

    async def health(self, request: web.Request) -> web.StreamResponse:
        return json_answer(
            HealthResponse(ok=True, version=__version__, time=time.time(), lease_ttl_s=self.leases.ttl_s)
        )

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._openapi_body, content_type=JSON)

    async def acquire(self, request: web.Request) -> web.StreamResponse:
        req = AcquireRequest.model_validate_json(await _body(request))
        grant, waited = await self.wakeups.acquire(req, connected=lambda: _connected(request))
        return json_answer(
            AcquireGranted(
                run_id=grant.run.run_id,
                lease_id=grant.lease.lease_id,
                epoch=grant.lease.epoch,
                ttl_s=self.leases.ttl_s,
                renew_interval_s=self.leases.renew_interval_s,
                run=self.views.summary(grant.run),
                spec=grant.spec,
                waited_s=round(waited, 3),
            )
        )

    async def renew(self, request: web.Request) -> web.StreamResponse:
        req = RenewRequest.model_validate_json(await _body(request))
        cancel_requested = self.leases.renew(req)
        return web.Response(body=self._renew_bodies[cancel_requested], content_type=JSON)

    async def release(self, request: web.Request) -> web.StreamResponse:
        req = ReleaseRequest.model_validate_json(await _body(request))
        return json_answer(ReleaseResponse(ok=True, status=self.leases.release(req)))

    async def report(self, request: web.Request) -> web.StreamResponse:
        run_id = _path_id(request)
        req = ReportRequest.model_validate_json(await _body(request))
        self.leases.report(run_id, req)
        return json_answer(ReportResponse(ok=True))

    async def list_runs(self, request: web.Request) -> web.StreamResponse:
        return json_answer(RunList(runs=self.views.summaries(), now=time.time()))

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        run_id = _path_id(request)
        events = _query_int(request, EVENTS_PARAM)
        metrics_points = _query_int(request, METRICS_PARAM)
        leases = _query_int(request, LEASES_PARAM)
        return json_answer(self.views.detail(run_id, events=events, metrics=metrics_points, leases=leases))

    async def submit(self, request: web.Request) -> web.StreamResponse:
        spec = RunSpec.model_validate_json(await _body(request))
        row, created = self.control.submit(spec)
        return json_answer(self.views.detail(row.run_id), 201 if created else 200)

    async def logs(self, request: web.Request) -> web.StreamResponse:
        run_id = _path_id(request)
        since = _query_int(request, SINCE_PARAM)
        limit = _query_int(request, LIMIT_PARAM)
        tail = _query_int(request, TAIL_PARAM)
        return json_answer(self.views.log_page(run_id, after=since, limit=limit, tail=tail))

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        # The gauges are computed now, at scrape time, never on the lease path.
        body = await metrics.render_off_loop(self.registry)
        return web.Response(
            body=body, headers={"Content-Type": f"{metrics.CONTENT_TYPE}; version=0.0.4; charset=utf-8"}
        )

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        row = self.control.cancel(_path_id(request))
        return json_answer(self.views.summary(row))


def _connected(request: web.Request) -> bool:
    """Whether the caller is still there to be answered (a long-polled acquire is never granted to a
    connection that closed while it waited)."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _path_regex(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "[^/]+", re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))


API_KEY = web.AppKey("commander_api", CommanderApi)


def create_app(
    state_path: str | Path,
    *,
    secret: str | None = None,
    lease_ttl_s: float = 60.0,
    sweep_interval_s: float | None = None,
    callback_settings: CallbackSettings | None = None,
    body_timeout_s: float = 30.0,
) -> web.Application:
    """Open the state (raises StoreError when it cannot be used) and build the application."""
    store = Store.open(state_path)
    try:
        leases = LeaseManager(store, ttl_s=lease_ttl_s)
        leases.watch = Wakeups(leases)
        restored = leases.load()
    except Exception:
        store.close()
        raise
    if restored:
        log.info("restored %d held lease(s), each with a full %gs TTL", restored, lease_ttl_s)
    callbacks = CallbackDispatcher(store, callback_settings)
    callbacks.attach(leases)
    api = CommanderApi(
        leases, SharedSecretAuth(secret), sweep_interval_s=sweep_interval_s, callbacks=callbacks
    )
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[body_deadline(body_timeout_s)])
    app[API_KEY] = api
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, api.wrap(ep), name=ep.handler)
    ui.install(app, api)  # the dashboard at /ui/ (and / redirecting there)
    app.router.add_route("*", "/{tail:.*}", api.not_found)
    app.cleanup_ctx.append(api.sweeper)
    app.cleanup_ctx.append(callbacks.cleanup_ctx)

    async def group_commit(_: web.Application) -> None:
        store.start_group_commit(
            asyncio.get_running_loop(), on_error=api.commit_failed, on_recovered=api.commits_again
        )
        api.wakeups.clock.start(asyncio.get_running_loop())

    app.on_startup.append(group_commit)

    async def end_long_polls(_: web.Application) -> None:
        api.wakeups.close()  # parked acquires answer now instead of holding the shutdown

    app.on_shutdown.append(end_long_polls)

    async def close_store(_: web.Application) -> None:
        store.close()

    app.on_cleanup.append(close_store)
    return app
