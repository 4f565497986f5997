"""The commander's routes, as data: the router (``relay.commander.app``) and the OpenAPI document
(``relay.commander.openapi``) are both generated from :data:`ENDPOINTS`, so they cannot drift.

Each :class:`Endpoint` names its handler, its request and response models, its query parameters,
whether it needs the shared secret and whether it mutates (the wrapper then awaits the store's
commit before answering).  Renew is the one write-path endpoint that does not mutate: it changes a
lease's expiry in memory only (what it may record on a refusal promises the caller nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from relay.commander import metrics
from relay.ids import INT64_MAX
from relay.schema import (
    AcquireDenied,
    AcquireGranted,
    AcquireRequest,
    ErrorResponse,
    HealthResponse,
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
    RunSummary,
)

JSON = "application/json"


@dataclass(frozen=True)
class QueryParam:
    """An optional integer query parameter: the handler and the OpenAPI document read its bounds here."""

    name: str
    description: str
    default: int
    low: int
    high: int


EVENTS_PARAM = QueryParam("events", "how many recent events (default 50)", 50, 1, 1000)
LEASES_PARAM = QueryParam("leases", "how many recent leases, one per epoch (default 100)", 100, 1, 10000)
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
    #: It writes to the store: the wrapper answers only once those writes are committed (fsynced when
    #: durable), so a grant or a release is on disk before anyone hears of it.  Declared here, not
    #: remembered in each handler, so a new endpoint cannot forget it.
    mutates: bool = False


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
        "Acquire a run's lease (creating the run), or the oldest waiting run when run_id is omitted; with "
        "wait_s, a refusal is held (long poll) until a release, expiry, submit or cancel makes it grantable.",
        AcquireRequest,
        {200: AcquireGranted, 404: ErrorResponse, 409: AcquireDenied},
        mutates=True,
    ),
    Endpoint(
        "POST",
        "/api/lease/renew",
        "renew",
        "Extend the caller's live lease by a full TTL.",  # memory only: not declared as mutating
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
        mutates=True,
    ),
    Endpoint(
        "POST",
        "/api/runs/{run_id}/report",
        "report",
        "Report progress from the lease holder (fenced by lease id and epoch).",
        ReportRequest,
        {200: ReportResponse, 409: ErrorResponse},
        mutates=True,
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
        mutates=True,
    ),
    Endpoint(
        "GET",
        "/api/runs/{run_id}",
        "get_run",
        "One run with its recent events, metrics history and lease history.",
        None,
        {200: RunDetail, 404: ErrorResponse},
        query=(EVENTS_PARAM, METRICS_PARAM, LEASES_PARAM),
    ),
    Endpoint(
        "POST",
        "/api/runs/{run_id}/cancel",
        "cancel",
        "Cancel a run: at once when it waits, at the holder's next renew when it runs.",
        None,
        {200: RunSummary, 404: ErrorResponse, 409: ErrorResponse},
        mutates=True,
    ),
    Endpoint(
        "GET",
        "/api/runs/{run_id}/logs",
        "logs",
        "A run's log timeline (trainer stdout/stderr and worker notes, each with the pod and epoch that "
        "printed it), oldest first, paged by a cursor.",
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
