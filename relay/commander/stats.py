"""The lease manager's counters, which the commander's Prometheus metrics export (``relay.commander.metrics``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stats:
    """Counters for the commander's Prometheus metrics (``relay.commander.metrics`` exports them)."""

    grants: int = 0
    renewals: int = 0
    releases: int = 0
    expiries: int = 0
    fenced: int = 0
    denials: int = 0
    submits: int = 0
    preemptions: int = 0  # runs handed back for the next worker: preempted releases and expired leases
    restarts: int = 0  # trainer restarts reported by workers plus failed runs the commander queued again
