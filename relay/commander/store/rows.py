"""The rows the store reads and writes: plain dataclasses (and two rules of a run row), no SQL.

The lease manager decides with these and hands them back to the store, which is the only code
that turns them into statements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.schema import CheckpointRef, RunStatus


@dataclass
class RunRow:
    """One row of ``runs``: the run and its current lease (lease_id is None when nobody holds it)."""

    run_id: str
    status: RunStatus
    created_at: float
    updated_at: float
    mode: str | None = None
    epoch: int = 0
    step: int | None = None
    latest_checkpoint: CheckpointRef | None = None
    remote_step: int | None = None
    cancel_requested: bool = False
    detail: str | None = None
    priority: int = 0
    max_restarts: int | None = None
    restarts: int = 0
    spec_json: str | None = None
    lease_id: str | None = None
    lease_worker: str | None = None
    lease_granted_at: float | None = None
    released_lease_id: str | None = None
    checkpoint_at: float | None = None  # wall clock when latest_checkpoint last changed
    active_s: float = 0.0  # seconds spent under ended leases (the max_duration_s budget), monotonic
    released_outcome: str | None = None  # the outcome of the release of released_lease_id
    epoch_floor: int | None = None  # the highest epoch known outside this state (its remote, a holder)
    lease_active_s: float = 0.0  # seconds under the current lease as of its last save (monotonic)

    def apply_progress(
        self, wall: float, step: int | None, checkpoint: CheckpointRef | None, remote_step: int | None
    ) -> None:
        """Where the holder says the run stands (a report, or a release's last word)."""
        if step is not None:
            self.step = step
        if checkpoint is not None:
            if self.latest_checkpoint is None or self.latest_checkpoint.step != checkpoint.step:
                self.checkpoint_at = wall
            self.latest_checkpoint = checkpoint
        if remote_step is not None:
            self.remote_step = remote_step
        self.updated_at = wall

    def end_lease(self, wall: float, lease_s: float) -> None:
        """The current lease ends (released, expired or replaced) after ``lease_s`` seconds: they count
        against the run's running time (the max_duration_s budget) and nobody holds the run.

        ``lease_s`` is measured on the monotonic clock by the lease manager, never as a difference of
        wall-clock times, so a clock step (NTP) charges nothing."""
        self.active_s += max(0.0, lease_s)
        self.lease_active_s = 0.0
        self.lease_id = self.lease_worker = self.lease_granted_at = None
        self.updated_at = wall


@dataclass
class NewEvent:
    ts: float
    epoch: int
    name: str
    worker_id: str | None = None
    message: str | None = None


@dataclass
class EventRow(NewEvent):
    id: int = 0


@dataclass
class MetricsRow:
    ts: float
    step: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LogRow:
    ts: float
    epoch: int
    stream: str
    line: str
    id: int = 0  # the row id: the logs endpoint's cursor
    worker_id: str | None = None  # the pod whose report carried it (None in files written before it was kept)


@dataclass
class LeaseRow:
    """One lease of a run (one epoch), as the history keeps it."""

    run_id: str
    epoch: int
    worker_id: str
    lease_id: str | None
    granted_at: float
    ended_at: float | None = None
    ended: str | None = None  # a release outcome, "expired" or "fenced"; None while live
    first_step: int | None = None
    last_step: int | None = None
    fenced_at: float | None = None


@dataclass(frozen=True)
class LeaseGranted:
    """A grant opens its epoch's history row (and ends a still-open older one as ``fenced``)."""

    epoch: int
    worker_id: str
    lease_id: str
    at: float


@dataclass(frozen=True)
class LeaseEnded:
    """A release (``how`` is its outcome) or an expiry (``how`` is ``expired``) ends the epoch's row."""

    epoch: int
    how: str
    at: float
    step: int | None = None


@dataclass(frozen=True)
class LeaseProgress:
    """A report's step; a ``resumed`` report sets where the epoch started."""

    epoch: int
    step: int
    resumed: bool = False


LeaseChange = LeaseGranted | LeaseEnded | LeaseProgress


@dataclass
class NewDelivery:
    """A callback to send, written to the outbox in the transaction of the change it reports."""

    event: str
    payload: str  # JSON of a CallbackPayload
    created_at: float


@dataclass
class DeliveryRow:
    id: int
    run_id: str
    event: str
    payload: str
    created_at: float
    attempts: int
    next_attempt_at: float


@dataclass
class CallbackStateRow:
    """How a run's deliveries went so far (``pending`` counts its rows in the outbox)."""

    run_id: str
    pending: int = 0
    delivered: int = 0
    dropped: int = 0
    last_attempt_at: float | None = None
    last_delivery_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None
