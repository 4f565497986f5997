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

The field types (strict numbers, ids, URLs) live in ``relay.wiretypes``, the event names in
``relay.eventnames``; this module imports no storage code, so validating a request loads nothing
but pydantic.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

# The event vocabulary travels on the wire (ReportRequest.event, the run detail): re-exported here.
from relay.eventnames import COMMANDER_EVENTS as COMMANDER_EVENTS
from relay.eventnames import LEASE_END_EVENTS as LEASE_END_EVENTS
from relay.eventnames import REPORTED_EVENTS as REPORTED_EVENTS
from relay.eventnames import WORKER_EVENTS as WORKER_EVENTS
from relay.eventnames import EventName
from relay.redact import MASK
from relay.wiretypes import (
    Float,
    HeaderText,
    Id,
    Int,
    MetricFloat,
    Mode,
    NonNegInt,
    RemoteUrl,
    Text,
    WaitSeconds,
    WebhookUrl,
    finite_json,
)


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


class LeaseEnd(str, Enum):
    """How one lease (one epoch of a run) ended, as the commander saw it; ``running`` while it is live."""

    running = "running"
    preempted = "preempted"  # released as preempted (the release outcomes, as asked)
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"  # its holder stopped renewing
    fenced = "fenced"  # a newer grant replaced it while it was live (the same worker asked again)


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
    """One line of a run's log timeline, as a worker ships it in a report."""

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


class RunSpec(_Request):
    """A run submitted as a job through ``POST /api/runs``; handed to the worker in the grant.

    In a grant, ``max_restarts`` and ``max_duration_s`` are what the run has *left* (restarts not yet
    used, running time not yet spent on earlier leases), so the worker's own limits add up to the
    spec's totals; ``callbacks.auth_header`` is masked there as everywhere else.
    """

    run_id: Id | None = Field(default=None, description="omitted: the commander generates one")
    mode: Mode = "sft"
    train: Annotated[dict[str, Any], AfterValidator(finite_json)] = Field(
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
    trainer_cmd: Annotated[str, Field(min_length=1, max_length=8192)] | None = Field(
        default=None, description="the trainer as one shell command run on the pod (RELAY_TRAINER_CMD)"
    )

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


class LeaseRecord(_Response):
    """One lease of a run (one epoch): who carried it, when, how it ended, and the steps it carried."""

    epoch: int
    worker_id: str
    granted_at: float
    ended_at: float | None = Field(default=None, description="null while the lease is live")
    ended: LeaseEnd = Field(description="a release outcome, expired, fenced, or running while live")
    first_step: int | None = Field(default=None, description="the first step its holder reported")
    last_step: int | None = Field(
        default=None, description="the last step its holder reported or released at"
    )
    fenced_at: float | None = Field(
        default=None,
        description="when its holder first called again after the lease had ended (and was refused)",
    )


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
    leases: list[LeaseRecord] = Field(
        default_factory=list, description="the run's leases, oldest epoch first"
    )
    spec: RunSpec | None = Field(default=None, description="the submitted spec (auth header masked)")
    callbacks: CallbackStatus | None = None


class RunList(_Response):
    runs: list[RunSummary]
    now: float = Field(description="the commander's clock when it answered")


class LogRecord(LogLine):
    """A stored log line as the logs endpoint serves it: with the pod and the lease epoch that printed it
    (taken from the lease of the report that carried it, never from the line itself)."""

    model_config = ConfigDict(extra="ignore")

    worker_id: str | None = Field(default=None, description="the pod (worker id) that shipped the line")
    epoch: int | None = Field(default=None, description="the lease epoch it was shipped under")


class LogsResponse(_Response):
    """A page of a run's log timeline, oldest first; pass ``next_cursor`` as ``since`` for the next page."""

    run_id: str
    status: RunStatus
    lines: list[LogRecord]
    next_cursor: int = Field(description="cursor after the last line returned (the same as since when none)")
    more: bool = Field(default=False, description="more lines follow: ask again at once")


# --------------------------------------------------------------------------- leases


class HeldLease(_Request):
    """A lease a restarted worker shows to take its own live lease back (see ``AcquireRequest.held_lease``)."""

    lease_id: Annotated[str, Field(min_length=1, max_length=128)]
    epoch: NonNegInt


class AcquireRequest(_Request):
    """Ask for a run's lease; ``run_id`` omitted asks for the oldest run waiting for a worker."""

    run_id: Id | None = None
    worker_id: Id
    mode: Mode | None = None
    held_lease: HeldLease | None = Field(
        None,
        description="The lease this worker process held on the run before it restarted (kept on its volume): "
        "only with it may a worker id take back its own live lease at once; without it a live lease is "
        "held, whoever asks.",
    )
    wait_s: WaitSeconds | None = Field(
        None,
        description="Long poll: a refusal (held, or no run waiting) is held up to this long, answered the moment "
        "a release, expiry, submit or cancel makes the run grantable; omitted or 0: answer at once.",
    )


class AcquireGranted(_Response):
    granted: Literal[True] = True
    run_id: str
    lease_id: str
    epoch: int
    ttl_s: float
    renew_interval_s: float
    run: RunSummary
    spec: RunSpec | None = None
    waited_s: float = Field(
        0.0, description="Seconds a long poll was held: granted no earlier than its send + this."
    )


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
    remote_epoch: NonNegInt | None = Field(
        None,
        description="The epoch the run's remote already holds when it is at or above this lease's (the "
        "remote refused this worker's claim): the commander's next grant jumps past it, so epochs never go "
        "backwards against storage.",
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
