"""When the commander's state is behind what the fleet holds: a lost or an older state file.

The state file is the only record of which leases exist.  If it was deleted (``<state>.lock`` shows a
commander used it, the file itself is gone) or replaced by an older copy, pods may still hold leases
the commander no longer knows, and granting their runs at once would put two trainers on one run.
Those lost leases were granted or renewed by the previous commander process, so all of them end (their
holders fence themselves, their guards kill the trainers) within one TTL of this process's start.  So:

* a commander that starts on a **lost** state file grants nothing until one TTL after its start;
* a run shown to be **behind** in this process - a holder presents an epoch above the one recorded,
  or a remote reports one (``ReleaseRequest.remote_epoch``) - is not granted until one TTL after start
  either, and its next grant goes past that epoch (``lease_rules.next_epoch``).

After that first TTL nothing from before the start can still be alive, and the epoch floor alone keeps
epochs from going backwards.  Memory only: a restart starts the count again, which is what it must do.
"""

from __future__ import annotations

from collections.abc import Callable


class LostState:
    """Which grants must wait because the state may be behind, and for how long."""

    def __init__(self, ttl_s: float, monotonic: Callable[[], float], *, lost_at_start: bool) -> None:
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        self.started = monotonic()
        self.lost_at_start = lost_at_start
        self._behind: set[str] = set()

    def behind(self, run_id: str) -> None:
        """``run_id`` holds leases this state does not know: hold its grants for the first TTL."""
        if self.monotonic() < self.started + self.ttl_s:
            self._behind.add(run_id)

    def wait_s(self, run_id: str) -> float:
        """Seconds before ``run_id`` may be granted (0: now)."""
        left = self.started + self.ttl_s - self.monotonic()
        if left <= 0:
            self._behind.clear()
            return 0.0
        return left if self.lost_at_start or run_id in self._behind else 0.0

    def reason(self, run_id: str) -> str:
        if self.lost_at_start:
            return "the commander started without its state file (it had been used: its lock file is there)"
        return f"a holder or the remote of run {run_id} showed an epoch above the one this state recorded"
