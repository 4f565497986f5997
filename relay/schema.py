"""Every model that crosses the commander's HTTP boundary: the wire contract.

The commander validates requests with these models, answers with them, and
generates its OpenAPI document from them, so the document cannot drift from the
code.  ``relay.client`` parses answers with the same classes.

Policy, chosen once for all requests:

* Unknown fields are rejected (``extra="forbid"``) so a misspelt field is a 422
  naming it instead of being silently ignored.  Responses ignore unknown fields,
  so an older client keeps working against a newer commander.
* Numbers and booleans are strict: ``"5"`` is not a step and ``1`` is not
  ``true``; an integer is accepted where a float is expected.
* Ids follow ``relay.ids`` (the one rule shared with the worker); a bad id is a
  validation error of type ``invalid_id`` which the commander answers with 400.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

from relay.ids import ID_PATTERN, INT64_MAX, id_problem
from relay.redact import MASK
from relay.remote.base import RemoteConfigError
from relay.remote.url import REMOTE_PATTERN, parse_remote_url

# --------------------------------------------------------------------------- scalar types


def _integral(value: object) -> object:
    """JSON Schema counts ``3.0`` as an integer, so the commander does too (never ``3.5``, ``"3"`` or ``true``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: SQLite stores 64-bit signed integers (``relay.ids.INT64_MAX``): anything larger would be a 500, so it
#: is a 422 naming the field.
Int = Annotated[int, Strict(), Field(ge=-INT64_MAX, le=INT64_MAX), BeforeValidator(_integral)]
#: A request float must be finite: JSON has no NaN/Infinity, yet the JSON parser accepts those literals and
#: reads ``1e400`` as infinity.  Metric values are the one exception (see :class:`ReportRequest`).
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
#: A metric value: NaN (a diverged loss) and infinities are accepted and stored / answered as null.
MetricFloat = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
NonNegInt = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX), BeforeValidator(_integral)]
Mode = Literal["sft", "rl"]

MAX_TEXT = 8192  # a message, a detail, a path: long enough for a traceback line, short enough for a DB row


def _check_id(value: str) -> str:
    reason = id_problem(value)
    if reason is not None:
        raise PydanticCustomError("invalid_id", "invalid id: {reason}", {"reason": reason})
    return value


#: A run or worker id, validated by the rule in ``relay.ids``; the documented schema carries the same
#: rule as a pattern, so a schema-valid id is never refused (and an invalid one is never documented).
Id = Annotated[
    str,
    AfterValidator(_check_id),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 128}),
]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class RunStatus(str, Enum):
    """Where a run is in its life; the allowed transitions live in ``relay.commander.runs``."""

    pending = "pending"
    running = "running"
    preempted = "preempted"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


#: Statuses from which a run is never granted again.
CLOSED_STATUSES = frozenset({RunStatus.completed, RunStatus.cancelled})


class ReleaseOutcome(str, Enum):
    """Why a worker hands its lease back."""

    preempted = "preempted"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class EventName(str, Enum):
    """Names of run events.

    Workers report the first group; the commander records ``acquired`` and the
    release outcomes itself, plus the two commander-only names at the end.
    """

    acquired = "acquired"
    resumed = "resumed"
    trainer_started = "trainer_started"
    checkpoint_committed = "checkpoint_committed"
    checkpoint_synced = "checkpoint_synced"
    sync_failed = "sync_failed"
    hang_detected = "hang_detected"
    trainer_restarted = "trainer_restarted"
    fenced = "fenced"
    preempted = "preempted"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    # commander-originated
    lease_expired = "lease_expired"
    cancel_requested = "cancel_requested"
    submitted = "submitted"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- shared pieces


class CheckpointRef(_Request):
    """A checkpoint the worker has committed locally (and maybe pushed: ``remote_revision``)."""

    step: NonNegInt
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    remote_revision: Annotated[str, Field(max_length=256)] | None = None


class LogLine(_Request):
    """One line of a run's log timeline (shipped in reports, served by issue 8's logs endpoint)."""

    ts: Float
    stream: Literal["stdout", "stderr", "worker"]
    line: Annotated[str, Field(max_length=16384)]


class CallbackEvent(str, Enum):
    """What a callback reports: a run status it entered, a synced checkpoint, or a heartbeat."""

    pending = "pending"
    running = "running"
    preempted = "preempted"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    checkpoint_synced = "checkpoint_synced"
    heartbeat = "heartbeat"


def _matching(pattern: str, code: str, message: str, max_length: int) -> Any:
    """A string type with a rule and a clear message, documented as the same regex (so the two agree)."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise PydanticCustomError(code, message)
        return value

    documented = {"type": "string", "pattern": pattern, "maxLength": max_length}
    return Annotated[str, Field(max_length=max_length), AfterValidator(check), WithJsonSchema(documented)]


#: http(s), a host name, IPv4 or [IPv6] address, an optional port, then printable ASCII (no spaces).
WEBHOOK_URL_PATTERN = r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?([/?#][!-~]*)?$"
#: One line of printable ASCII: it becomes an HTTP header, so no CR/LF can smuggle in another one.
HEADER_PATTERN = r"^[ -~]+$"

WebhookUrl = _matching(
    WEBHOOK_URL_PATTERN, "invalid_url", "must be an http:// or https:// URL with a host", 2048
)
HeaderText = _matching(HEADER_PATTERN, "invalid_header", "must be one line of printable ASCII", 4096)


def _check_remote(value: str) -> str:
    try:
        parse_remote_url(value)
    except RemoteConfigError as exc:
        raise PydanticCustomError("invalid_remote", "{reason}", {"reason": str(exc)}) from None
    return value


#: A remote a worker can open, by the one rule of ``relay.remote.url`` (the worker's config uses it too).
RemoteUrl = Annotated[
    str,
    Field(max_length=2048),
    AfterValidator(_check_remote),
    WithJsonSchema({"type": "string", "pattern": REMOTE_PATTERN, "maxLength": 2048}),
]


class CallbackSpec(_Request):
    """Where the commander reports a run's status changes (delivered by ``relay.commander.callbacks``)."""

    webhook_url: WebhookUrl = Field(description="http:// or https:// URL the commander POSTs to")
    auth_header: HeaderText | None = Field(
        default=None,
        repr=False,
        description="sent as the Authorization header value, or as header Name when written 'Name: value' "
        "(Name an HTTP token); never returned by the API (shown as ***) and never logged",
    )
    events: list[CallbackEvent] | None = Field(
        default=None,
        description="deliver only these (default: every status change, checkpoint_synced and heartbeat)",
    )


def _non_finite_path(value: Any, path: str, depth: int = 0) -> str | None:
    """The dotted path of the first NaN/Infinity inside ``value``, or None when every number is finite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if depth > 100:  # deeper than any real config; the body limit bounds the work anyway
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}", depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
    return None


def _finite_json(value: dict[str, Any]) -> dict[str, Any]:
    """The train block goes to the trainer as JSON: NaN/Infinity (or 1e400) would make it invalid JSON."""
    where = _non_finite_path(value, "train")
    if where is not None:
        raise PydanticCustomError(
            "finite_number",
            "non-finite number at {where} (NaN and Infinity are not JSON)",
            {"where": where},
        )
    return value


class RunSpec(_Request):
    """A run submitted as a job through ``POST /api/runs``; handed to the worker in the grant.

    In a grant, ``max_restarts`` and ``max_duration_s`` are what the run has *left* (restarts not yet
    used, running time not yet spent on earlier leases), so the worker's own limits add up to the
    spec's totals; ``callbacks.auth_header`` is masked there as everywhere else.
    """

    run_id: Id | None = Field(default=None, description="omitted: the commander generates one")
    mode: Mode = "sft"
    train: Annotated[dict[str, Any], AfterValidator(_finite_json)] = Field(
        default_factory=dict,
        description="the trainer's train: block (free-form JSON; numbers must be finite)",
    )
    remote: RemoteUrl | None = None
    max_restarts: NonNegInt = Field(
        default=3,
        description="restarts after a failure, in all: the worker restarting its trainer and the commander "
        "handing a failed run to the next worker both count",
    )
    priority: Int = Field(default=0, description="higher is handed out first; ties go to the oldest run")
    max_duration_s: Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="running time the run may use across all its leases"
    )
    callbacks: CallbackSpec | None = None

    def masked(self) -> RunSpec:
        """This spec as the API shows it: the callback auth header replaced by ``***``."""
        if self.callbacks is None or not self.callbacks.auth_header:
            return self
        return self.model_copy(update={"callbacks": self.callbacks.model_copy(update={"auth_header": MASK})})


class CallbackPayload(_Response):
    """The JSON body of every callback POST (``X-Relay-Delivery`` carries a delivery id for de-duplication)."""

    run_id: str
    event: CallbackEvent = Field(description="a status the run entered, checkpoint_synced or heartbeat")
    status: RunStatus
    epoch: int
    step: int | None = None
    detail: str | None = None
    metrics: dict[str, float | None] | None = None
    latest_checkpoint: CheckpointRef | None = None
    remote_step: int | None = None
    restarts: int = 0
    timestamp: float = Field(description="when it happened (commander clock, Unix seconds)")


class CallbackStatus(_Response):
    """How a run's callbacks are getting on (part of the run detail)."""

    webhook_url: str
    pending: int = Field(description="deliveries waiting to be sent (or retried)")
    delivered: int = 0
    dropped: int = Field(default=0, description="deliveries given up after the last retry")
    last_attempt_at: float | None = None
    last_delivery_at: float | None = Field(default=None, description="last successful delivery")
    last_status: int | None = Field(default=None, description="HTTP status of the last attempt")
    last_error: str | None = None
    next_attempt_at: float | None = None


# --------------------------------------------------------------------------- runs


class EventRecord(_Response):
    """A run event as stored: reported by a worker or recorded by the commander."""

    ts: float
    epoch: int
    name: str = Field(description="an EventName value")
    worker_id: str | None = None
    message: str | None = None


class MetricsPoint(_Response):
    """Metrics of one report; a non-finite value (NaN loss) is answered as null."""

    ts: float
    step: int
    epoch: int
    metrics: dict[str, float | None]


class RunSummary(_Response):
    """What ``relayctl status`` shows for each run; times are the commander's wall clock (Unix seconds)."""

    run_id: str
    status: RunStatus
    mode: Mode | None = None
    epoch: int = Field(description="the fencing token: incremented on every grant")
    holder: str | None = Field(default=None, description="worker id of the live lease, if any")
    lease_expires_at: float | None = None
    last_renew_at: float | None = None
    last_renew_age_s: float | None = Field(default=None, description="seconds since the last renew or grant")
    step: int | None = None
    latest_checkpoint: CheckpointRef | None = None
    remote_step: int | None = None
    cancel_requested: bool = False
    detail: str | None = Field(default=None, description="detail of the last release")
    created_at: float
    updated_at: float
    priority: int = 0
    restarts: int = 0
    max_restarts: int | None = None


class RunDetail(RunSummary):
    """One run with its recent history."""

    events: list[EventRecord] = Field(default_factory=list)
    metrics_history: list[MetricsPoint] = Field(default_factory=list)
    spec: RunSpec | None = Field(default=None, description="the submitted spec (auth header masked)")
    callbacks: CallbackStatus | None = None


class RunList(_Response):
    runs: list[RunSummary]
    now: float = Field(description="the commander's clock when it answered")


class LogsResponse(_Response):
    """A page of a run's log timeline, oldest first; pass ``next_cursor`` as ``since`` for the next page."""

    run_id: str
    status: RunStatus
    lines: list[LogLine]
    next_cursor: int = Field(description="cursor after the last line returned (the same as since when none)")
    more: bool = Field(default=False, description="more lines follow: ask again at once")


# --------------------------------------------------------------------------- leases


class AcquireRequest(_Request):
    """Ask for a run's lease; ``run_id`` omitted asks for the oldest run waiting for a worker."""

    run_id: Id | None = None
    worker_id: Id
    mode: Mode | None = None


class AcquireGranted(_Response):
    granted: Literal[True] = True
    run_id: str
    lease_id: str
    epoch: int
    ttl_s: float
    renew_interval_s: float
    run: RunSummary
    spec: RunSpec | None = None


class AcquireDenied(_Response):
    """409 to an acquire: another worker holds a live lease, or the run is closed (``status``)."""

    granted: Literal[False] = False
    holder: str | None = None
    retry_after_s: float = 0.0
    status: RunStatus | None = None
    detail: str = ""


class RenewRequest(_Request):
    run_id: Id
    worker_id: Id
    lease_id: Annotated[str, Field(min_length=1, max_length=128)]
    epoch: NonNegInt


class RenewResponse(_Response):
    ok: bool = True
    ttl_s: float
    cancel_requested: bool = False


class ReleaseRequest(_Request):
    run_id: Id
    worker_id: Id
    lease_id: Annotated[str, Field(min_length=1, max_length=128)]
    epoch: NonNegInt
    outcome: ReleaseOutcome
    detail: Text | None = None
    step: NonNegInt | None = Field(
        None, description="The holder's last step: its final word, in case its last report was lost."
    )
    checkpoint: CheckpointRef | None = None
    remote_step: NonNegInt | None = None
    restartable: bool = Field(
        True,
        description="With outcome failed: false when the failure would repeat on any pod (the trainer "
        "reported a configuration or data error), so the commander does not spend the run's "
        "max_restarts budget handing it out again.",
    )


class ReleaseResponse(_Response):
    ok: bool = True
    status: RunStatus


class ReportRequest(_Request):
    """Progress from the lease holder; fenced by ``lease_id`` and ``epoch`` like a renew."""

    worker_id: Id
    lease_id: Annotated[str, Field(min_length=1, max_length=128)]
    epoch: NonNegInt
    step: NonNegInt
    metrics: (
        Annotated[dict[Annotated[str, Field(max_length=200)], MetricFloat], Field(max_length=256)] | None
    ) = None
    checkpoint: CheckpointRef | None = None
    remote_step: NonNegInt | None = None
    event: EventName | None = None
    message: Text | None = None
    log_tail: Annotated[list[LogLine], Field(max_length=2000)] | None = None


class ReportResponse(_Response):
    ok: bool = True


# --------------------------------------------------------------------------- misc


class HealthResponse(_Response):
    ok: bool = True
    version: str
    time: float | None = Field(default=None, description="the commander's clock")
    lease_ttl_s: float | None = None


class ErrorResponse(_Response):
    """Body of every 4xx answer except an acquire denial (which is AcquireDenied)."""

    error: str = Field(description="one line a person can act on")
    code: str = Field(description="stable machine-readable reason, e.g. stale_lease, invalid_id")
    field: str | None = Field(default=None, description="the offending field, dotted for nested ones")
    status: RunStatus | None = Field(default=None, description="the run's status, when it explains the error")
    detail: Any = None
