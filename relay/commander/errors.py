"""The refusals of the commander's rules, each with the HTTP answer it becomes.

The lease manager raises them; the HTTP layer (``relay.commander.app``) turns each into its status
and an ``ErrorResponse`` (or an ``AcquireDenied``) naming the code, the run's status and the field.
"""

from __future__ import annotations

from relay.schema import RunStatus


class RuleError(Exception):
    """A request the rules refuse; ``app.py`` turns it into an HTTP answer."""

    http_status = 409
    code = "conflict"
    field: str | None = None

    def __init__(self, message: str, *, status: RunStatus | None = None, detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class StaleLeaseError(RuleError):
    """The lease in the request is not the run's live lease (released, expired, re-granted)."""

    code = "stale_lease"


class LeaseHeldError(RuleError):
    """Another worker holds a live lease on the run (``holder`` None: leases the state lost may still be
    held, see ``relay.commander.lost_state``); ask again after ``retry_after_s``."""

    code = "lease_held"

    def __init__(self, message: str, *, holder: str | None, retry_after_s: float, status: RunStatus) -> None:
        super().__init__(message, status=status)
        self.holder = holder
        self.retry_after_s = retry_after_s


class RunClosedError(RuleError):
    """The run is completed or cancelled: never granted again."""

    code = "run_closed"


class NoWaitingRunError(RuleError):
    http_status = 404
    code = "no_waiting_run"


class RunNotFoundError(RuleError):
    http_status = 404
    code = "not_found"


class ModeMismatchError(RuleError):
    http_status = 422
    code = "mode_mismatch"
    field = "mode"


class SpecConflictError(RuleError):
    """A submit for an existing run id with a different spec (or for a run that was not submitted)."""

    code = "spec_conflict"
    field = "run_id"


class EpochExhaustedError(RuleError):
    """The run's remote holds an epoch no grant can exceed (``lease_rules.MAX_EPOCH``): never granted again."""

    code = "epoch_exhausted"
