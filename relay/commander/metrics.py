"""``GET /metrics``: the commander's state in the Prometheus text format (through prometheus-client).

Nothing here runs on the lease path.  The counters are the lease manager's plain ``Stats``
integers (an increment each, no locks, no label lookups) and every value, counters included,
is read by one custom collector when Prometheus scrapes, so a renewal costs exactly what it
did before metrics existed.  Each app gets its own ``CollectorRegistry``: no process-global
state, so two commanders in one test process never share or clash over metric names.

Counters count since the commander started (Prometheus handles the reset on a restart).  The
per-run gauges cover runs that are not finished (pending, running, preempted), so the series
of a long-lived commander do not grow with every run it ever held:

* ``relay_run_checkpoint_lag_steps``: trainer step - newest local checkpoint step (work a
  crash would lose),
* ``relay_run_sync_lag_steps``: newest local checkpoint step - remote step (what a pod loss
  would lose),
* ``relay_run_seconds_since_checkpoint``: age of the newest checkpoint.

Auth: when the commander has a shared secret, ``/metrics`` requires it like every endpoint but
health (run ids are not for everyone).  Prometheus sends it with
``authorization: {credentials: <secret>}`` (type Bearer) in the scrape config.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.commander.callbacks import CallbackDispatcher
from relay.commander.leases import LeaseManager
from relay.commander.wakeups import Wakeups
from relay.schema import RunStatus

#: Content type of the text exposition format (prometheus_client.CONTENT_TYPE_LATEST, without the charset).
CONTENT_TYPE = "text/plain"

#: Statuses whose runs get per-run gauges.
_ACTIVE = (RunStatus.pending, RunStatus.running, RunStatus.preempted)


class CommanderCollector(Collector):
    """Reads the lease manager's counters and the store's runs at scrape time."""

    def __init__(
        self,
        leases: LeaseManager,
        callbacks: CallbackDispatcher | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.leases = leases
        self.callbacks = callbacks
        self.wall = wall

    def describe(self) -> Iterable[Metric]:
        return []  # no up-front description: collect() is only ever run by a scrape

    def collect(self) -> Iterable[Metric]:
        stats = self.leases.stats
        for name, value, help_text in (
            ("relay_leases_granted", stats.grants, "Leases granted (every grant is a new epoch)."),
            ("relay_lease_renewals", stats.renewals, "Successful lease renewals."),
            ("relay_lease_releases", stats.releases, "Leases released by their holder."),
            (
                "relay_lease_expiries",
                stats.expiries,
                "Leases that expired because their holder stopped renewing.",
            ),
            (
                "relay_lease_denials",
                stats.denials,
                "Acquires refused: run held by another worker, or closed.",
            ),
            (
                "relay_fenced_requests",
                stats.fenced,
                "Renew, release or report requests refused because their lease was no longer current.",
            ),
            ("relay_preemptions", stats.preemptions, "Runs handed to the next worker: preempted or expired."),
            (
                "relay_restarts",
                stats.restarts,
                "Restarts: trainer restarts reported by workers plus failed runs queued again.",
            ),
            ("relay_runs_submitted", stats.submits, "Runs created through POST /api/runs."),
        ):
            yield CounterMetricFamily(name, help_text, value=value)

        store = self.leases.store
        counts = store.count_by_status()
        by_status = GaugeMetricFamily("relay_runs", "Runs by status.", labels=["status"])
        for status in RunStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        yield by_status
        yield GaugeMetricFamily("relay_leases_held", "Live leases.", value=self.leases.held_count())
        if isinstance(self.leases.watch, Wakeups):
            parked = self.leases.watch.waiters.count()
            yield GaugeMetricFamily(
                "relay_acquires_waiting", "Long-polled acquires parked now.", value=parked
            )

        yield from self._per_run()

        if self.callbacks is not None:
            deliveries = CounterMetricFamily(
                "relay_callback_deliveries", "Callback delivery attempts by result.", labels=["result"]
            )
            deliveries.add_metric(["delivered"], self.callbacks.delivered)
            deliveries.add_metric(["failed"], self.callbacks.failed_attempts)
            deliveries.add_metric(["dropped"], self.callbacks.dropped)
            yield deliveries
            yield GaugeMetricFamily(
                "relay_callback_pending",
                "Callbacks waiting to be delivered.",
                value=store.pending_deliveries(),
            )

    def _per_run(self) -> Iterable[Metric]:
        labels = ["run_id"]
        step = GaugeMetricFamily("relay_run_step", "Trainer step last reported.", labels=labels)
        ckpt = GaugeMetricFamily(
            "relay_run_checkpoint_step", "Newest committed checkpoint step.", labels=labels
        )
        remote = GaugeMetricFamily(
            "relay_run_remote_step", "Newest checkpoint step on the remote.", labels=labels
        )
        ckpt_lag = GaugeMetricFamily(
            "relay_run_checkpoint_lag_steps", "Trainer step minus newest checkpoint step.", labels=labels
        )
        sync_lag = GaugeMetricFamily(
            "relay_run_sync_lag_steps", "Newest local checkpoint step minus the remote's step.", labels=labels
        )
        age = GaugeMetricFamily(
            "relay_run_seconds_since_checkpoint",
            "Seconds since the newest checkpoint was reported.",
            labels=labels,
        )
        restarts = GaugeMetricFamily("relay_run_restarts", "Restarts the run has used.", labels=labels)
        now = self.wall()
        for (
            run_id,
            run_step,
            checkpoint,
            remote_step,
            checkpoint_at,
            run_restarts,
        ) in self.leases.store.run_gauges(_ACTIVE):
            key = [run_id]
            restarts.add_metric(key, run_restarts)
            if run_step is not None:
                step.add_metric(key, run_step)
            if checkpoint is not None:
                ckpt.add_metric(key, checkpoint)
                if run_step is not None:
                    ckpt_lag.add_metric(key, max(0, run_step - checkpoint))
                if remote_step is not None:  # a run without a remote has no sync lag
                    sync_lag.add_metric(key, max(0, checkpoint - remote_step))
            if remote_step is not None:
                remote.add_metric(key, remote_step)
            if checkpoint_at is not None:
                age.add_metric(key, max(0.0, now - checkpoint_at))
        yield from (step, ckpt, remote, ckpt_lag, sync_lag, age, restarts)


def build_registry(leases: LeaseManager, callbacks: CallbackDispatcher | None = None) -> CollectorRegistry:
    """A registry of its own for one app (never prometheus_client's global REGISTRY)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CommanderCollector(leases, callbacks))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``, all on the calling thread."""
    return generate_latest(registry)


class _Collected:
    """Families already collected, for generate_latest (which only calls ``collect()``)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


async def render_off_loop(registry: CollectorRegistry) -> bytes:
    """Collect on the event loop (the store is the loop's), format the text in a thread.

    Formatting is the larger part of a scrape of many runs (tens of milliseconds for a
    thousand); done on the loop it would delay the renewals waiting behind it.
    """
    families = list(registry.collect())
    return await asyncio.to_thread(generate_latest, _Collected(families))  # type: ignore[arg-type]
