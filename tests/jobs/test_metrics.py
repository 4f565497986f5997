"""GET /metrics: Prometheus text through prometheus-client, one registry per app, behind the secret."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.commander.calls import SECRET, acquire, lease_body, leases_of, release, report
from tests.jobs.calls import spec, submit


async def scrape(client, headers: dict | None = None) -> dict[str, dict[tuple, float]]:
    resp = await client.get("/metrics", headers=headers or {})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/plain"
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


async def test_metrics_count_leases_runs_and_lag(commander):
    await submit(commander, spec("a", max_restarts=1))
    await submit(commander, spec("b"))
    _, grant = await acquire(commander, None)  # "a"
    for _ in range(3):
        assert (await commander.post("/api/lease/renew", json=lease_body(grant))).status == 200
    stale = {**lease_body(grant), "lease_id": "not-the-lease"}
    assert (await commander.post("/api/lease/renew", json=stale)).status == 409
    await report(
        commander,
        grant,
        step=12,
        checkpoint={"step": 10, "path": "/vol/step_10"},
        remote_step=5,
        event="trainer_restarted",
    )
    samples = await scrape(commander)
    assert value(samples, "relay_leases_granted_total") == 1
    assert value(samples, "relay_lease_renewals_total") == 3
    assert value(samples, "relay_fenced_requests_total") == 1
    assert value(samples, "relay_restarts_total") == 1
    assert value(samples, "relay_runs_submitted_total") == 2
    assert value(samples, "relay_runs", status="running") == 1
    assert value(samples, "relay_runs", status="pending") == 1
    assert value(samples, "relay_runs", status="completed") == 0
    assert value(samples, "relay_leases_held") == 1
    assert value(samples, "relay_run_step", run_id="a") == 12
    assert value(samples, "relay_run_checkpoint_lag_steps", run_id="a") == 2
    assert value(samples, "relay_run_sync_lag_steps", run_id="a") == 5
    assert 0 <= value(samples, "relay_run_seconds_since_checkpoint", run_id="a") < 5
    assert value(samples, "relay_run_restarts", run_id="a") == 1
    assert ("run_id", "b") not in dict(samples["relay_run_step"])  # no step reported yet
    assert value(samples, "relay_callback_pending") == 0

    await release(commander, grant, "preempted")
    _, grant = await acquire(commander, "b", worker_id="w2")
    await release(commander, grant, "completed", worker_id="w2")
    samples = await scrape(commander)
    assert value(samples, "relay_preemptions_total") == 1
    assert value(samples, "relay_runs", status="completed") == 1
    assert value(samples, "relay_runs", status="preempted") == 1
    assert ("run_id", "b") not in {
        k for key in samples["relay_run_restarts"] for k in key
    }  # finished: no series


async def test_each_app_has_its_own_registry(make_commander, tmp_path):
    first = await make_commander(state=tmp_path / "one.db")
    second = await make_commander(state=tmp_path / "two.db")
    _, grant = await acquire(first)
    await commander_renew(first, grant)
    assert value(await scrape(first), "relay_lease_renewals_total") == 1
    assert value(await scrape(second), "relay_lease_renewals_total") == 0
    assert leases_of(first).stats is not leases_of(second).stats


async def commander_renew(client, grant) -> None:
    assert (await client.post("/api/lease/renew", json=lease_body(grant))).status == 200


async def test_metrics_need_the_secret_when_one_is_set(make_commander):
    client = await make_commander(secret=SECRET)
    assert (await client.get("/metrics")).status == 401
    samples = await scrape(client, {"Authorization": f"Bearer {SECRET}"})
    assert "relay_leases_granted_total" in samples
