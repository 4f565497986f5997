"""Watchdog rules: when is a trainer hung, out of time, or crashed, and may it be restarted.

Pure decisions with an injectable clock, so every rule is tested without processes.  The agent
feeds it (trainer started, progress seen, trainer exited) and acts on what it answers.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from relay.backoff import Backoff

OOM_MARKERS = (
    "CUDA out of memory",
    "OutOfMemoryError",
    "torch.cuda.OutOfMemoryError",
    "CUBLAS_STATUS_ALLOC_FAILED",
)

#: trainer_blackbox/README.md section 5: exit code 2 is a configuration or data error (reported before
#: any model is loaded), so a restart would only fail the same way again.
EXIT_CONFIG_OR_DATA = 2
CONFIG_OR_DATA_REASON = "configuration or data error (exit code 2): restarting cannot help"


class Verdict(str, enum.Enum):
    """Why the supervisor must act on a trainer that is still running."""

    HANG = "hang"
    RUNTIME_EXCEEDED = "runtime_exceeded"


@dataclass(frozen=True)
class ExitReport:
    """A trainer's exit, classified for the restart decision and the failure message."""

    exit_code: int | None
    signal: int | None
    oom: bool
    reason: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def restartable(self) -> bool:
        """Whether restarting the trainer may help: not after exit code 2 (a configuration or data
        error by the trainer contract; the same train: block and data would fail the same way)."""
        return self.exit_code != EXIT_CONFIG_OR_DATA


def detect_oom(lines: Iterable[str]) -> bool:
    """True when the log tail shows a CUDA out-of-memory error."""
    return any(marker in line for line in lines for marker in OOM_MARKERS)


def classify_exit(returncode: int | None, tail: Iterable[str]) -> ExitReport:
    """Name an exit: clean, killed by a signal, CUDA OOM, or a plain non-zero exit code."""
    lines = list(tail)
    oom = detect_oom(lines)
    sig = -returncode if returncode is not None and returncode < 0 else None
    if returncode == 0:
        return ExitReport(0, None, False, "exited 0")
    if oom:
        reason = f"CUDA out of memory (exit code {returncode})"
    elif sig is not None:
        reason = f"killed by signal {sig}"
    elif returncode == EXIT_CONFIG_OR_DATA:
        reason = CONFIG_OR_DATA_REASON
    else:
        reason = f"exit code {returncode}"
    return ExitReport(returncode, sig, oom, reason)


class Watchdog:
    """Hang (no progress line for ``hang_timeout_s``; the first line may take ``startup_timeout_s``) and
    runtime (``max_runtime_s`` since the session's first trainer start) detection."""

    def __init__(
        self,
        *,
        hang_timeout_s: float | None,
        startup_timeout_s: float | None = None,
        max_runtime_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hang_timeout_s = hang_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.max_runtime_s = max_runtime_s
        self.clock = clock
        self._session_start: float | None = None
        self._last_progress: float | None = None
        self._seen_progress = False

    def trainer_started(self) -> None:
        now = self.clock()
        if self._session_start is None:
            self._session_start = now
        self._last_progress = now
        self._seen_progress = False

    def progress(self) -> None:
        self._last_progress = self.clock()
        self._seen_progress = True

    def hang_limit(self) -> float | None:
        """The silence currently allowed: the startup allowance until the first line, then the hang timeout."""
        if self.hang_timeout_s is None:
            return None
        if not self._seen_progress and self.startup_timeout_s is not None:
            return max(self.hang_timeout_s, self.startup_timeout_s)
        return self.hang_timeout_s

    def silence_s(self) -> float:
        return 0.0 if self._last_progress is None else self.clock() - self._last_progress

    def check(self) -> Verdict | None:
        """What must happen now to a running trainer, if anything."""
        now = self.clock()
        if (
            self.max_runtime_s is not None
            and self._session_start is not None
            and now - self._session_start >= self.max_runtime_s
        ):
            return Verdict.RUNTIME_EXCEEDED
        limit = self.hang_limit()
        if limit is not None and self._last_progress is not None and now - self._last_progress >= limit:
            return Verdict.HANG
        return None


class RestartPolicy:
    """Up to ``max_restarts`` restarts, the n-th after ``backoff.delay(n - 1)`` seconds (the worker uses the
    exact doubling sequence: ``restart_backoff_s * 2**(n-1)``, capped at ``restart_backoff_max_s``)."""

    def __init__(self, max_restarts: int, backoff: Backoff) -> None:
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.restarts = 0

    def next_delay(self) -> float | None:
        """Delay before the next restart, counting it; None when the budget is spent."""
        if self.restarts >= self.max_restarts:
            return None
        self.restarts += 1
        return self.backoff.delay(self.restarts - 1)
