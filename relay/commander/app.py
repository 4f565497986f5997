"""The commander's HTTP face: thin aiohttp handlers over ``leases.LeaseManager``.

Each handler validates its input with a model from ``relay.schema``, calls one
method of the lease manager, awaits the store's commit when that method wrote
something (so a grant or a release is on disk before anyone hears of it), and
answers with another model.  :data:`ENDPOINTS`
is the one list of routes: the router and the OpenAPI document are both built
from it, so the document cannot drift from the code.

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
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from relay import __version__
from relay.commander import metrics, ui
from relay.commander.auth import SharedSecretAuth
from relay.commander.callbacks import CallbackDispatcher, CallbackSettings
from relay.commander.leases import LeaseHeldError, LeaseManager, RuleError
from relay.commander.store import Store, StoreError
from relay.ids import ID_PATTERN, id_problem
from relay.schema import (
    INT64_MAX,
    AcquireDenied,
    AcquireGranted,
    AcquireRequest,
    CallbackPayload,
    ErrorResponse,
    HealthResponse,
    LogLine,
    LogsResponse,
    ReleaseRequest,
    ReleaseResponse,
    RenewRequest,
    RenewResponse,
    ReportRequest,
    ReportResponse,
    RunDetail,
    RunList,
    RunSpec,
    RunStatus,
    RunSummary,
)

log = logging.getLogger("relay.commander")

MAX_BODY_BYTES = 1024 * 1024
JSON = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class QueryParam:
    """An optional integer query parameter: the handler and the OpenAPI document read its bounds here."""

    name: str
    description: str
    default: int
    low: int
    high: int


EVENTS_PARAM = QueryParam("events", "how many recent events (default 50)", 50, 1, 1000)
METRICS_PARAM = QueryParam("metrics", "how many metrics points (default 200)", 200, 1, 10000)
SINCE_PARAM = QueryParam(
    "since",
    "cursor: only lines after it (next_cursor of the previous page; default 0, the start)",
    0,
    0,
    INT64_MAX,
)
LIMIT_PARAM = QueryParam("limit", "at most this many lines (default 1000)", 1000, 1, 10000)
TAIL_PARAM = QueryParam(
    "tail", "only the last N lines after the cursor (default 0: all, paged by limit)", 0, 0, 10000
)


@dataclass(frozen=True)
class Endpoint:
    """One route: the router and the OpenAPI document are generated from these."""

    method: str
    path: str
    handler: str  # name of the CommanderApi method
    summary: str
    request: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel]] = field(default_factory=dict)
    auth: bool = True
    query: tuple[QueryParam, ...] = ()
    media: str | None = None  # a 200 that is not JSON: its media type


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/api/health",
        "health",
        "Liveness and version (no auth).",
        None,
        {200: HealthResponse},
        auth=False,
    ),
    Endpoint("GET", "/api/openapi.json", "openapi", "This document.", None, {}),
    Endpoint(
        "POST",
        "/api/lease/acquire",
        "acquire",
        "Acquire a run's lease (creating the run), or the oldest waiting run when run_id is omitted.",
        AcquireRequest,
        {200: AcquireGranted, 404: ErrorResponse, 409: AcquireDenied},
    ),
    Endpoint(
        "POST",
        "/api/lease/renew",
        "renew",
        "Extend the caller's live lease by a full TTL.",
        RenewRequest,
        {200: RenewResponse, 409: ErrorResponse},
    ),
    Endpoint(
        "POST",
        "/api/lease/release",
        "release",
        "Hand the lease back with an outcome.",
        ReleaseRequest,
        {200: ReleaseResponse, 409: ErrorResponse},
    ),
    Endpoint(
        "POST",
        "/api/runs/{run_id}/report",
        "report",
        "Report progress from the lease holder (fenced by lease id and epoch).",
        ReportRequest,
        {200: ReportResponse, 409: ErrorResponse},
    ),
    Endpoint("GET", "/api/runs", "list_runs", "All runs.", None, {200: RunList}),
    Endpoint(
        "POST",
        "/api/runs",
        "submit",
        "Submit a run spec: 201 with the new run, 200 when the same spec was submitted before, "
        "409 when the run id exists with another spec.",
        RunSpec,
        {200: RunDetail, 201: RunDetail, 409: ErrorResponse},
    ),
    Endpoint(
        "GET",
        "/api/runs/{run_id}",
        "get_run",
        "One run with its recent events and metrics history.",
        None,
        {200: RunDetail, 404: ErrorResponse},
        query=(EVENTS_PARAM, METRICS_PARAM),
    ),
    Endpoint(
        "POST",
        "/api/runs/{run_id}/cancel",
        "cancel",
        "Cancel a run: at once when it waits, at the holder's next renew when it runs.",
        None,
        {200: RunSummary, 404: ErrorResponse, 409: ErrorResponse},
    ),
    Endpoint(
        "GET",
        "/api/runs/{run_id}/logs",
        "logs",
        "A run's log timeline (trainer stdout/stderr and worker notes), oldest first, paged by a cursor.",
        None,
        {200: LogsResponse, 404: ErrorResponse},
        query=(SINCE_PARAM, LIMIT_PARAM, TAIL_PARAM),
    ),
    Endpoint(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics (text format); needs the shared secret like the API (a bearer token).",
        None,
        {},
        media=metrics.CONTENT_TYPE,
    ),
)


class ApiError(Exception):
    """A request error found in the HTTP layer (path parameter, query, body size)."""

    def __init__(self, http_status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.field = field


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model.__pydantic_serializer__.to_json(model), status=status, content_type=JSON)


def _error(
    http_status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    run_status: RunStatus | None = None,
    detail: object = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = ErrorResponse(error=message, code=code, field=field, status=run_status, detail=detail)
    response = _json(body, http_status)
    if headers:
        response.headers.update(headers)
    return response


_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "field required",
}


def _validation_error(exc: ValidationError) -> web.Response:
    """400 for a body that is not a JSON object or a bad id, 422 for other field errors; names the field."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if not errors:  # pragma: no cover - pydantic always lists at least one
        return _error(400, "validation_error", "invalid request body", "body")
    first = next((e for e in errors if e["type"] == "invalid_id"), errors[0])
    loc = ".".join(str(p) for p in first["loc"])
    detail = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "type": e["type"], "message": e["msg"]}
        for e in errors
    ]
    if first["type"] == "json_invalid":
        return _error(400, "malformed_json", f"body is not valid JSON: {first['msg']}", "body", detail=detail)
    if not loc:
        return _error(400, "bad_body", f"body must be a JSON object: {first['msg']}", "body", detail=detail)
    message = _FRIENDLY.get(first["type"], first["msg"])
    if first["type"] == "invalid_id":
        return _error(400, "invalid_id", f"{loc}: {message}", loc, detail=detail)
    return _error(422, "validation_error", f"{loc}: {message}", loc, detail=detail)


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
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"body is over the {MAX_BODY_BYTES} byte limit", "body") from None


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
        self.auth = auth
        self.callbacks = callbacks
        self.registry = metrics.build_registry(leases, callbacks)
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
        """Auth plus the error mapping around one handler: the only place an exception becomes an answer."""
        fn: Handler = getattr(self, endpoint.handler)
        check = self.auth.check if endpoint.auth and self.auth.enabled else None

        async def handler(request: web.Request) -> web.StreamResponse:
            if check is not None and not check(request.headers):
                return _error(
                    401,
                    "unauthorized",
                    "missing or wrong shared secret: send 'Authorization: Bearer <secret>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                return await fn(request)
            except ValidationError as exc:
                return _validation_error(exc)
            except LeaseHeldError as exc:
                denied = AcquireDenied(
                    holder=exc.holder, retry_after_s=exc.retry_after_s, status=exc.status, detail=str(exc)
                )
                return _json(denied, 409)
            except RuleError as exc:
                if endpoint.handler == "acquire" and exc.http_status == 409:
                    return _json(AcquireDenied(status=exc.status, detail=str(exc)), 409)
                return _error(
                    exc.http_status, exc.code, str(exc), exc.field, run_status=exc.status, detail=exc.detail
                )
            except ApiError as exc:
                return _error(exc.http_status, exc.code, str(exc), exc.field)
            except (StoreError, sqlite3.Error) as exc:
                log.error("state store error on %s %s: %s", request.method, request.path, exc)
                return _error(503, "store_error", f"commander state store error: {exc}")
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.path)
                return _error(500, "internal_error", "internal commander error (see the commander's log)")

        handler.__name__ = endpoint.handler
        return handler

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """JSON 404/405 for anything outside :data:`ENDPOINTS`."""
        allowed = sorted({method for regex, method in self._known_paths if regex.fullmatch(request.path)})
        if allowed:
            return _error(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return _error(404, "no_route", f"no endpoint {request.method} {request.path}")

    async def sweeper(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: end expired leases in the background, so waiting runs show up promptly."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.sweep_interval_s)
                try:
                    self.leases.expire_due()
                except Exception:
                    log.exception("lease sweeper failed; retrying")

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # ------------------------------------------------------------------ handlers

    async def health(self, request: web.Request) -> web.StreamResponse:
        return _json(
            HealthResponse(ok=True, version=__version__, time=time.time(), lease_ttl_s=self.leases.ttl_s)
        )

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._openapi_body, content_type=JSON)

    async def acquire(self, request: web.Request) -> web.StreamResponse:
        req = AcquireRequest.model_validate_json(await _body(request))
        grant = self.leases.acquire(req)
        await self.leases.store.committed()  # the grant is on disk before anyone hears of it
        return _json(
            AcquireGranted(
                run_id=grant.run.run_id,
                lease_id=grant.lease.lease_id,
                epoch=grant.lease.epoch,
                ttl_s=self.leases.ttl_s,
                renew_interval_s=self.leases.renew_interval_s,
                run=self.leases.summary(grant.run),
                spec=grant.spec,
            )
        )

    async def renew(self, request: web.Request) -> web.StreamResponse:
        req = RenewRequest.model_validate_json(await _body(request))
        cancel_requested = self.leases.renew(req)
        return web.Response(body=self._renew_bodies[cancel_requested], content_type=JSON)

    async def release(self, request: web.Request) -> web.StreamResponse:
        req = ReleaseRequest.model_validate_json(await _body(request))
        status = self.leases.release(req)
        await self.leases.store.committed()
        return _json(ReleaseResponse(ok=True, status=status))

    async def report(self, request: web.Request) -> web.StreamResponse:
        run_id = _path_id(request)
        req = ReportRequest.model_validate_json(await _body(request))
        self.leases.report(run_id, req)
        await self.leases.store.committed()
        return _json(ReportResponse(ok=True))

    async def list_runs(self, request: web.Request) -> web.StreamResponse:
        return _json(RunList(runs=self.leases.list_summaries(), now=time.time()))

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        run_id = _path_id(request)
        events = _query_int(request, EVENTS_PARAM)
        metrics_points = _query_int(request, METRICS_PARAM)
        return _json(self._detail(run_id, events=events, metrics=metrics_points))

    def _detail(self, run_id: str, **limits: int) -> RunDetail:
        """The run detail with its callback delivery state."""
        detail = self.leases.get_detail(run_id, **limits)
        if self.callbacks is not None and detail.spec is not None and detail.spec.callbacks is not None:
            row = self.leases.store.get_run(run_id)
            if row is not None:
                detail.callbacks = self.callbacks.status(row)
        return detail

    async def submit(self, request: web.Request) -> web.StreamResponse:
        spec = RunSpec.model_validate_json(await _body(request))
        row, created = self.leases.submit(spec)
        await self.leases.store.committed()  # the run (and its pending callback) is on disk first
        return _json(self._detail(row.run_id), 201 if created else 200)

    async def logs(self, request: web.Request) -> web.StreamResponse:
        run_id = _path_id(request)
        since = _query_int(request, SINCE_PARAM)
        limit = _query_int(request, LIMIT_PARAM)
        tail = _query_int(request, TAIL_PARAM)
        row, lines, more = self.leases.log_page(run_id, after=since, limit=limit, tail=tail)
        return _json(
            LogsResponse(
                run_id=run_id,
                status=row.status,
                lines=[
                    LogLine.model_construct(ts=line.ts, stream=line.stream, line=line.line) for line in lines
                ],
                next_cursor=lines[-1].id if lines else since,
                more=more,
            )
        )

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        # The gauges are computed now, at scrape time, never on the lease path.
        body = await metrics.render_off_loop(self.registry)
        return web.Response(
            body=body, headers={"Content-Type": f"{metrics.CONTENT_TYPE}; version=0.0.4; charset=utf-8"}
        )

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        run_id = _path_id(request)
        row = self.leases.cancel(run_id)
        await self.leases.store.committed()
        return _json(self.leases.summary(row))


def _path_regex(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "[^/]+", re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))


def build_openapi() -> dict[str, object]:
    """The OpenAPI 3.1 document, generated from :data:`ENDPOINTS` and the pydantic models."""
    models: list[type[BaseModel]] = [ErrorResponse, CallbackPayload]
    for ep in ENDPOINTS:
        if ep.request is not None:
            models.append(ep.request)
        models.extend(ep.responses.values())
    unique = list(dict.fromkeys(models))
    _, defs = models_json_schema(
        [(m, "validation") for m in unique], ref_template="#/components/schemas/{model}"
    )

    def ref(model: type[BaseModel]) -> dict[str, object]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def content(model: type[BaseModel]) -> dict[str, object]:
        return {"application/json": {"schema": ref(model)}}

    paths: dict[str, dict[str, object]] = {}
    for ep in ENDPOINTS:
        responses: dict[str, object] = {
            str(code): {
                "description": model.__doc__.strip().splitlines()[0] if model.__doc__ else model.__name__,
                "content": content(model),
            }
            for code, model in ep.responses.items()
        }
        if ep.handler == "openapi":
            responses["200"] = {
                "description": "OpenAPI document",
                "content": {JSON: {"schema": {"type": "object"}}},
            }
        if ep.media is not None:
            responses["200"] = {
                "description": ep.summary,
                "content": {ep.media: {"schema": {"type": "string"}}},
            }
        if ep.request is not None or "{run_id}" in ep.path or ep.query:
            responses.setdefault(
                "400", {"description": "bad id, malformed JSON or query", "content": content(ErrorResponse)}
            )
        if ep.request is not None:
            responses["413"] = {"description": "body over 1 MiB", "content": content(ErrorResponse)}
            responses["422"] = {
                "description": "a field is missing, unknown or mistyped",
                "content": content(ErrorResponse),
            }
        if ep.auth:
            responses["401"] = {
                "description": "missing or wrong shared secret",
                "content": content(ErrorResponse),
            }
        operation: dict[str, object] = {
            "operationId": ep.handler,
            "summary": ep.summary,
            "responses": responses,
        }
        parameters: list[dict[str, object]] = []
        if "{run_id}" in ep.path:
            parameters.append(
                {
                    "name": "run_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": ID_PATTERN},
                }
            )
        for param in ep.query:
            parameters.append(
                {
                    "name": param.name,
                    "in": "query",
                    "required": False,
                    "description": param.description,
                    "schema": {
                        "type": "integer",
                        "minimum": param.low,
                        "maximum": param.high,
                        "default": param.default,
                    },
                }
            )
        if parameters:
            operation["parameters"] = parameters
        if ep.request is not None:
            operation["requestBody"] = {"required": True, "content": content(ep.request)}
        operation["security"] = [{"bearer": []}, {"relaySecret": []}] if ep.auth else []
        paths.setdefault(ep.path, {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "relay-trainer commander", "version": __version__},
        "paths": paths,
        "webhooks": {
            "runCallback": {
                "post": {
                    "summary": "What the commander POSTs to a run's callbacks.webhook_url (any 2xx acknowledges).",
                    "requestBody": {"required": True, "content": content(CallbackPayload)},
                    "responses": {"200": {"description": "delivered"}},
                }
            }
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "relaySecret": {"type": "apiKey", "in": "header", "name": "X-Relay-Secret"},
            },
        },
    }


API_KEY = web.AppKey("commander_api", CommanderApi)


def create_app(
    state_path: str | Path,
    *,
    secret: str | None = None,
    lease_ttl_s: float = 60.0,
    sweep_interval_s: float | None = None,
    callback_settings: CallbackSettings | None = None,
) -> web.Application:
    """Open the state (raises StoreError when it cannot be used) and build the application."""
    store = Store.open(state_path)
    try:
        leases = LeaseManager(store, ttl_s=lease_ttl_s)
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
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[API_KEY] = api
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, api.wrap(ep), name=ep.handler)
    ui.install(app, api)  # the dashboard at /ui/ (and / redirecting there)
    app.router.add_route("*", "/{tail:.*}", api.not_found)
    app.cleanup_ctx.append(api.sweeper)
    app.cleanup_ctx.append(callbacks.cleanup_ctx)

    async def group_commit(_: web.Application) -> None:
        # A batch that fails to commit was rolled back: rebuild the live leases from what is on disk.
        store.start_group_commit(asyncio.get_running_loop(), on_error=lambda _exc: leases.load())

    app.on_startup.append(group_commit)

    async def close_store(_: web.Application) -> None:
        store.close()

    app.on_cleanup.append(close_store)
    return app
