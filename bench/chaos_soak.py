"""Chaos soak: minutes of contention, kills, stalls, commander restarts and partitions, then every promise checked.

    .venv/bin/python bench/chaos_soak.py                  # 4 minutes of faults, then the runs finish
    .venv/bin/python bench/chaos_soak.py --duration 60 --seed 3 --json

Real processes on loopback: a commander (``relayctl serve``), ``relayctl worker`` processes with the mock
trainer on several "pods" (volumes), a shared filesystem remote. A seeded driver keeps ``--workers``
workers alive and, every ``--every`` seconds, does one of: SIGKILL or SIGTERM a worker at a chosen
moment (while training, mid-checkpoint, right after a checkpoint is complete, during its upload),
``kill -9`` the commander and restart it, or cut a worker's link to the commander for a while (half of
the workers reach the commander through a TCP proxy), SIGSTOP a worker alone for longer than the TTL
(its trainer and guard run on), stop reading a worker's stdout/stderr (a stalled log driver), or poison
a run's remote ``relay/state.json`` with an epoch no commander grants. ``--commit-fail-runs`` runs are
submitted whose every checkpoint commit fails. Whenever a run ends a new one is added. After
``--duration`` seconds the faults stop and the open runs get to finish.

The commander-side faults of issue 13 are mixed in too (``relay_testkit.chaos_faults``): a second worker
started with a live holder's WORKER_ID, the commander's state deleted or replaced by an older copy, and
bursts of never-finishing connections against a commander with a small open-file limit.

Then the checker shared with ``tests/chaos`` (relay_testkit/chaos_checks.py) reads what every process
recorded and prints the figures: runs completed, kills and pauses of each kind, fencing violations
(must be 0) with the overlaps (a trainer alive after a later epoch's grant) and stale publishes (a
publish from an epoch older than one that had claimed the remote) among them, the most steps lost by
one hard kill (same volume: at most one checkpoint interval; another volume: what the dead pod had not
uploaded yet), commander restarts survived, how the poisoned and never-committing runs ended. Exit
status 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def add_commander_fault_flags(p: argparse.ArgumentParser) -> None:
    """The commander-side faults of issue 13 (relay_testkit.chaos_faults), mixed in by default."""
    p.add_argument("--no-duplicate-ids", action="store_true", help="never start a worker with a live id")
    p.add_argument(
        "--no-state-wipes", action="store_true", help="never delete or restore the commander state"
    )
    p.add_argument(
        "--no-slow-clients", action="store_true", help="never flood the commander with slow clients"
    )
    p.add_argument(
        "--slow-clients", type=int, default=600, help="connections in a slow-client burst (default 600)"
    )
    p.add_argument(
        "--commander-fd-limit", type=int, default=512, help="the commander's open-file limit (default 512)"
    )


def commander_fault_settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        "duplicate_id_weight": 0.0 if args.no_duplicate_ids else 0.1,
        "state_wipe_weight": 0.0 if args.no_state_wipes else 0.05,
        "slow_clients_weight": 0.0 if args.no_slow_clients else 0.1,
        "slow_clients": args.slow_clients,
        "commander_fd_limit": args.commander_fd_limit,
    }


def main(argv: list[str] | None = None) -> int:
    from relay_testkit.chaos_checks import check_artifacts
    from relay_testkit.chaos_cluster import ChaosCluster, ChaosDriver, ChaosSettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=240.0, help="seconds of fault injection (default 240)")
    p.add_argument("--seed", type=int, default=1, help="seed of the driver's decisions (default 1)")
    p.add_argument("--workers", type=int, default=4, help="workers alive at once (default 4)")
    p.add_argument("--runs", type=int, default=3, help="runs open at once (default 3)")
    p.add_argument("--volumes", type=int, default=6, help="pods' volumes (default 6)")
    p.add_argument("--max-steps", type=int, default=300, help="steps per run (default 300)")
    p.add_argument("--save-steps", type=int, default=10, help="checkpoint interval in steps (default 10)")
    p.add_argument("--step-seconds", type=float, default=0.04, help="mock step time (default 0.04)")
    p.add_argument(
        "--checkpoint-bytes",
        type=int,
        default=64 * 1024,
        help="size of each fake checkpoint (default 64 KiB)",
    )
    p.add_argument("--ttl", type=float, default=3.0, help="lease TTL in seconds (default 3)")
    p.add_argument(
        "--every",
        type=float,
        nargs=2,
        default=(1.0, 3.0),
        metavar=("MIN", "MAX"),
        help="seconds between faults",
    )
    p.add_argument("--no-commander-restarts", action="store_true", help="never restart the commander")
    p.add_argument("--no-partitions", action="store_true", help="never cut a worker's link")
    add_commander_fault_flags(p)
    p.add_argument("--no-pauses", action="store_true", help="never SIGSTOP a worker")
    p.add_argument("--no-blocked-output", action="store_true", help="never stall a worker's stdout/stderr")
    p.add_argument("--poisoned-runs", type=int, default=1, help="runs whose remote gets poisoned (default 1)")
    p.add_argument("--commit-fail-runs", type=int, default=1, help="runs whose commits all fail (default 1)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep everything here (default: a temp dir, removed on success)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)

    settings = ChaosSettings(
        runs=args.runs,
        workers=args.workers,
        volumes=max(args.volumes, args.workers + 1),
        max_steps=args.max_steps,
        save_steps=args.save_steps,
        step_seconds=args.step_seconds,
        checkpoint_bytes=args.checkpoint_bytes,
        ttl_s=args.ttl,
        chaos_s=args.duration,
        drain_timeout_s=max(120.0, args.max_steps * args.step_seconds * 4),
        action_every_s=tuple(args.every),  # type: ignore[arg-type]
        commander_restart_weight=0.0 if args.no_commander_restarts else 0.15,
        partition_weight=0.0 if args.no_partitions else 0.15,
        pause_weight=0.0 if args.no_pauses else 0.15,
        block_output_weight=0.0 if args.no_blocked_output else 0.1,
        pause_s=(args.ttl + 1.0, args.ttl + 3.0),
        block_output_s=(args.ttl + 1.0, args.ttl + 3.0),
        poison_weight=0.05 if args.poisoned_runs else 0.0,
        poison_max=args.poisoned_runs,
        commit_fail_runs=args.commit_fail_runs,
        new_runs=True,
        seed=args.seed,
        **commander_fault_settings(args),
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="relay-chaos-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    log(f"chaos soak: {args.duration:g}s of faults, seed {args.seed}, workdir {workdir}")
    with ChaosCluster(workdir, settings) as cluster:
        artifacts = ChaosDriver(cluster, log=log).run()
    log("checking")
    report = check_artifacts(artifacts)
    figures = report.figures()
    figures["seed"] = args.seed
    figures["workdir"] = str(workdir)
    if args.json:
        print(json.dumps({**figures, "violation_list": [str(v) for v in report.violations]}, indent=1))
    else:
        print(report.summary())
        print(
            "\nruns completed {runs_completed}/{runs_expected}, kills injected {kills_injected}, fencing violations "
            "{fencing_violations} (overlaps {overlaps}, stale publishes {stale_publishes}), most steps lost by "
            "one hard kill {max_steps_lost_one_hard_kill} (same volume {max_steps_lost_hard_kill_same_volume}, "
            "checkpoint interval {interval}), commander restarts survived {commander_restarts_survived}, "
            "partitions {partitions}, pauses {pauses}, blocked outputs {output_blocks}, poisoned runs ended "
            "failed {poisoned_runs_ended_failed}/{poisoned_runs}, never-committing runs ended failed "
            "{commit_fail_runs_ended_failed}/{commit_fail_runs}".format(
                **figures, interval=settings.save_steps
            )
        )
    ok = not report.violations
    if ok and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not ok:
        print(f"records kept in {workdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
