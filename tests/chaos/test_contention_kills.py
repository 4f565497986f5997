"""Several workers contend for a few runs while a seeded driver kills them (SIGKILL and SIGTERM) at chosen
moments: during training, mid-checkpoint, right after a checkpoint is complete, during an upload.

Every promise is then checked from what the processes recorded (relay_testkit/chaos_checks.py): no two
trainers of a run ever alive at once, epochs strictly increasing, every resume from a checkpoint that
was completely written and verified, graceful preemptions lose nothing, a hard kill loses at most one
checkpoint interval on the same volume and never more than what was not yet durable, and every run
completes with the right final step.
"""

from __future__ import annotations

from pathlib import Path

from relay_testkit.chaos_checks import check_artifacts
from relay_testkit.chaos_cluster import ChaosCluster, ChaosDriver, ChaosSettings


def test_contending_workers_killed_at_random_moments_keep_every_promise(tmp_path: Path) -> None:
    settings = ChaosSettings(seed=7, runs=2, workers=3, volumes=4, chaos_s=20.0)
    with ChaosCluster(tmp_path, settings) as cluster:
        artifacts = ChaosDriver(cluster, log=print).run()
    report = check_artifacts(artifacts)
    print(report.summary())
    assert not report.violations, report.summary()
    assert report.fencing_violations == 0
    assert report.runs_completed == settings.runs
    # nothing cut a link or stopped the commander here: no worker may have lost its lease on its own
    assert report.fenced_by_cause.get("other", 0) == 0, report.summary()
    # the chaos really happened: runs were handed on after hard kills and after graceful preemptions
    assert report.kills_injected >= 5, report.summary()
    assert report.ends["killed"] >= 1 and report.ends["graceful"] >= 1, report.summary()
    assert report.epochs >= 4, report.summary()
