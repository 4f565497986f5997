"""Handoff benchmark: SIGTERM on worker A -> first progress line of worker B's trainer, phase by phase.

Setup (all on loopback, the mock trainer, a ``file://`` remote): a real commander; worker A training
run ``bench`` on its own relay_root; worker B, a standby "pod" with an EMPTY relay_root, already
running and polling for the lease (``--standby-backoff-s`` caps its retry delay). Then SIGTERM to A.

Phases, from the timestamps in both events.jsonl files and B's progress file:

  final_save        SIGTERM -> A starts committing the final checkpoint (trainer saves and exits)
  commit            A hashes, fsyncs and renames it into ckpt/step_N (commit_s of the event)
  upload            A committed -> A's remote push of it finished
  release           A synced -> A released the lease (report flush + release call)
  lease_handoff     A synced -> B granted the lease (A's release + B's next acquire poll)
  download          B granted -> B resumed (remote state, pull, verify, install)
  launch            B resumed -> B spawned the trainer (clear staging, write train config, spawn)
  trainer_start     B spawned -> first progress line (python + mock start-up + one step)

``overhead`` = total - commit - upload - download - trainer_start: what the relay itself costs, as
opposed to moving the checkpoint's bytes (hashing them, uploading, downloading) and starting the
trainer. Target with the mock trainer: under 1 s.

Usage::

    .venv/bin/python bench/handoff_bench.py [--repeat 3] [--checkpoint-bytes 8388608] [--json]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from relay_testkit.commander_proc import CommanderProcess  # noqa: E402
from relay_testkit.workerproc import WorkerProc  # noqa: E402

PHASES = ("final_save", "commit", "upload", "release", "lease_handoff", "download", "launch", "trainer_start")


def _wait(cond: Any, timeout: float, what: str, worker: WorkerProc | None = None) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.005)
    tail = worker.output()[-3000:] if worker is not None else ""
    raise RuntimeError(f"timed out waiting for {what}\n{tail}")


def _last(events: list[dict[str, Any]], name: str, **match: Any) -> dict[str, Any]:
    found = [e for e in events if e["event"] == name and all(e.get(k) == v for k, v in match.items())]
    if not found:
        raise RuntimeError(f"no {name} event matching {match}")
    return found[-1]


def one_handoff(workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    remote = f"file://{workdir / 'remote'}"
    train = {
        "max_steps": 1_000_000,
        "save_steps": args.save_steps,
        "step_seconds": args.step_seconds,
        "checkpoint_bytes": args.checkpoint_bytes,
    }
    settings = {"grace_s": 30, "report_interval_s": 2}
    with CommanderProcess(workdir / "commander.db", lease_ttl_s=args.ttl) as cmd:
        a = WorkerProc(
            workdir / "pod-a",
            commander_url=cmd.url,
            run_id="bench",
            worker_id="pod-a",
            remote=remote,
            train=train,
            settings=settings,
        ).start()
        b = WorkerProc(
            workdir / "pod-b",
            commander_url=cmd.url,
            run_id="bench",
            worker_id="pod-b",
            remote=remote,
            train=train,
            settings={
                **settings,
                "acquire_backoff_s": args.standby_backoff_s,
                "acquire_backoff_max_s": args.standby_backoff_s,
            },
        )
        try:
            _wait(lambda: any(e["event"] == "checkpoint_synced" for e in a.events()), 60, "A's first sync", a)
            b.start()
            _wait(lambda: "is held by" in b.output(), 30, "B polling for the lease", b)
            time.sleep(args.settle_s)
            t0 = time.time()
            a.send(signal.SIGTERM)
            first = _wait(lambda: b.progress(), 60, "B's first progress line", b)[0]
            t_first = float(first["ts"])
            rc = a.wait(30)
            if rc != 0:
                raise RuntimeError(f"worker A exited {rc}:\n{a.output()[-3000:]}")
            ev_a, ev_b = a.events(), b.events()
        finally:
            b.kill()
            a.kill()
    preempted = _last(ev_a, "preempted")
    final_step = preempted["checkpoint_step"]
    committed = _last(ev_a, "checkpoint_committed", step=final_step)
    synced = _last(ev_a, "checkpoint_synced", step=final_step)
    acquired = _last(ev_b, "acquired")
    resumed = _last(ev_b, "resumed")
    started = _last(ev_b, "trainer_started")
    if resumed.get("step") != final_step:
        raise RuntimeError(f"B resumed from {resumed.get('step')}, A's final checkpoint was {final_step}")
    phases = {
        "final_save": committed["ts"] - committed.get("commit_s", 0.0) - t0,
        "commit": committed.get("commit_s", 0.0),
        "upload": synced["ts"] - committed["ts"],
        "release": preempted["ts"] - synced["ts"],
        "lease_handoff": acquired["ts"] - synced["ts"],
        "download": resumed["ts"] - acquired["ts"],
        "launch": started["ts"] - resumed["ts"],
        "trainer_start": t_first - started["ts"],
    }
    total = t_first - t0
    phases["total"] = total
    moving = phases["commit"] + phases["upload"] + phases["download"]
    phases["overhead"] = total - moving - phases["trainer_start"]
    phases["step"] = float(final_step)
    return phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="handoffs to measure (default 3)")
    p.add_argument(
        "--checkpoint-bytes", type=int, default=8 << 20, help="fake weights per checkpoint (default 8 MiB)"
    )
    p.add_argument("--step-seconds", type=float, default=0.02, help="mock step time (default 0.02)")
    p.add_argument("--save-steps", type=int, default=50, help="mock checkpoint interval (default 50)")
    p.add_argument("--ttl", type=float, default=10.0, help="commander lease TTL (default 10 s)")
    p.add_argument(
        "--standby-backoff-s", type=float, default=0.25, help="B's acquire retry delay cap (default 0.25 s)"
    )
    p.add_argument(
        "--settle-s", type=float, default=0.5, help="training time between B's start and the SIGTERM"
    )
    p.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = p.parse_args(argv)

    results = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="relay-handoff-") as tmp:
            results.append(one_handoff(Path(tmp), args))
        print(
            f"run {i + 1}/{args.repeat}: total {results[-1]['total']:.3f}s overhead {results[-1]['overhead']:.3f}s",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"args": vars(args), "runs": results}, indent=2))
        return 0
    keys = (*PHASES, "total", "overhead")
    print(
        f"handoff: mock trainer, file:// remote, checkpoint {args.checkpoint_bytes / 2**20:.1f} MiB, "
        f"step {args.step_seconds}s, standby acquire backoff {args.standby_backoff_s}s, {args.repeat} run(s)"
    )
    print(f"{'phase':<18}{'median s':>10}{'min s':>10}{'max s':>10}")
    for key in keys:
        vals = [r[key] for r in results]
        print(f"{key:<18}{statistics.median(vals):>10.3f}{min(vals):>10.3f}{max(vals):>10.3f}")
    worst = max(r["overhead"] for r in results)
    verdict = "OK" if worst < 1.0 else "OVER TARGET"
    print(
        f"overhead (total - commit - upload - download - trainer_start): worst {worst:.3f}s, "
        f"target < 1 s: {verdict}"
    )
    return 0 if worst < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
