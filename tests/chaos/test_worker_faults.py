"""The worker-side faults of issue 13 under the independent checker (relay_testkit/chaos_checks.py).

- Stalled workers: a worker SIGSTOPped alone (its trainer and the trainer's guard run on) and a worker
  whose stdout/stderr pipe nobody reads (a stalled log driver), each for longer than the lease TTL, while
  others contend for the runs.  The guard kills the stalled worker's trainer before its lease can end, so
  no trainer of an older epoch is alive when the next epoch is granted, and no push of the stalled worker
  lands after the next holder claimed the remote.
- Storage faults: a run whose remote ``relay/state.json`` is poisoned with an epoch no commander grants
  ends ``failed`` naming that epoch (no loop), and a run whose checkpoint commits all fail ends ``failed``
  saying so (never ``completed``), while a normal run beside them completes.
"""

from __future__ import annotations

from pathlib import Path

from relay_testkit.chaos_checks import check_artifacts
from relay_testkit.chaos_cluster import ChaosCluster, ChaosDriver, ChaosSettings


def _run(tmp_path: Path, settings: ChaosSettings):  # type: ignore[no-untyped-def]
    with ChaosCluster(tmp_path, settings) as cluster:
        artifacts = ChaosDriver(cluster, log=print).run()
    report = check_artifacts(artifacts)
    print(report.summary())
    assert not report.violations, report.summary()
    return report


def test_stalled_workers_lose_their_trainers_before_their_leases_end(tmp_path: Path) -> None:
    settings = ChaosSettings(
        seed=11,
        runs=2,
        workers=3,
        volumes=5,
        max_steps=250,
        chaos_s=16.0,
        action_every_s=(1.5, 2.5),
        kill_weight=0.3,
        pause_weight=1.0,
        block_output_weight=1.0,
        pause_s=(4.0, 5.0),
        block_output_s=(4.0, 5.0),
    )
    report = _run(tmp_path, settings)
    assert report.pauses >= 1 and report.output_blocks >= 1, report.summary()
    assert report.runs_completed == settings.runs
    assert report.fenced_by_cause["pause"] >= 1, (
        report.summary()
    )  # a stopped worker woke up without its lease
    assert report.remote_states_seen > 0  # the storage check saw the remote


def test_a_poisoned_remote_and_a_run_whose_commits_fail_end_failed_with_their_reasons(tmp_path: Path) -> None:
    settings = ChaosSettings(
        seed=5,
        runs=2,
        workers=3,
        volumes=5,
        max_steps=120,
        chaos_s=10.0,
        action_every_s=(1.0, 2.0),
        poison_weight=1.0,
        commit_fail_runs=1,
    )
    report = _run(tmp_path, settings)
    assert report.poisoned_runs == 1 and report.poisoned_ended_failed == 1, report.summary()
    assert report.commit_fail_runs == 1 and report.commit_fail_ended_failed == 1, report.summary()
    assert report.runs_completed == report.runs_expected == 1  # the run nobody poisoned
