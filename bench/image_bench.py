"""Image benchmark: the image's size, and how long a worker takes to start from it versus on the host.

The image is built (or re-used) as the image test builds it (relay_testkit/image.py: buildah, the
local Debian base, a CPU torch); containers run as relay_testkit/container.py runs them (no Docker
engine here). A real commander runs on the host; each worker carries a tiny mock-trainer run.

Phases of one worker start, from the moment `docker run` (here: `buildah from` + `buildah run`) is
issued, or the host's `python -m relay.worker` is spawned:

  create         the container exists (`buildah from`: an overlay on the image; 0 on the host)
  check          the entrypoint's `relayctl worker --check` passed (its line in the output; host: none)
  acquire        the worker holds the lease (its `acquired` event)
  first_step     the trainer's first progress line
  done           the worker exited after the run completed

Usage::

    .venv/bin/python bench/image_bench.py [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from relay_testkit import image as img  # noqa: E402
from relay_testkit.commander_proc import CommanderProcess  # noqa: E402
from relay_testkit.container import Container, have_buildah  # noqa: E402
from relay_testkit.workerproc import WorkerProc, read_jsonl  # noqa: E402

SECRET = "bench-secret"
TRAIN = {"max_steps": 3, "save_steps": 3, "step_seconds": 0.01}
PHASES = ("create", "check", "acquire", "first_step", "done")


def _until(cond: Any, timeout: float, what: str, output: Any) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return time.monotonic()
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}\n{output()[-3000:]}")


def _marks(run_dir: Path, started: float, exited: Any, output: Any) -> dict[str, float]:
    events = run_dir / "events.jsonl"
    progress = run_dir / "progress.jsonl"
    acquired = _until(
        lambda: any(e["event"] == "acquired" for e in read_jsonl(events)), 120, "acquired", output
    )
    first = _until(lambda: read_jsonl(progress), 120, "first step", output)
    done = _until(exited, 120, "exit", output)
    return {"acquire": acquired - started, "first_step": first - started, "done": done - started}


def image_start(tag: str, url: str, root: Path, run_id: str) -> dict[str, float]:
    volume = root / run_id
    argv = ["docker", "run", "-v", f"{volume}:/mnt"]
    env = {
        "COMMANDER_URL": url,
        "RUN_ID": run_id,
        "RELAY_REMOTE": "file:///mnt/remote",
        "RELAY_SHARED_SECRET": SECRET,
        "RELAY_TRAINER": "mock",
        "TRAIN": json.dumps(TRAIN),
        "REPORT_INTERVAL_S": "0.5",
    }
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    container = Container.from_argv([*argv, tag], root / f"{run_id}.log")
    started = time.monotonic()
    with container as c:
        created = time.monotonic()
        checked = _until(lambda: "check passed" in c.output(), 120, "the entrypoint's check", c.output)
        marks = _marks(
            volume / "relay" / "runs" / run_id, started, lambda: c.proc.poll() is not None, c.output
        )
        if c.proc.returncode != 0:
            raise RuntimeError(f"worker container exited {c.proc.returncode}\n{c.output()}")
    return {"create": created - started, "check": checked - started, **marks}


def host_start(url: str, root: Path, run_id: str) -> dict[str, float]:
    w = WorkerProc(root / run_id, commander_url=url, run_id=run_id, worker_id=run_id, train=TRAIN)
    w.env["RELAY_SHARED_SECRET"] = SECRET
    started = time.monotonic()
    w.start()
    marks = _marks(w.run_dir(), started, lambda: w.proc is not None and w.proc.poll() is not None, w.output)
    if w.proc is None or w.proc.returncode != 0:
        raise RuntimeError(f"host worker failed\n{w.output()}")
    return {"create": 0.0, "check": 0.0, **marks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not have_buildah():
        print("image_bench: buildah is not installed (bash tools/install_image_tools.sh)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="relay-image-bench-") as tmp:
        root = Path(tmp)
        built = img.ensure_image(root / "build.log")
        size = img.size(built.tag)
        image_runs, host_runs = [], []
        with CommanderProcess(root / "state.db", secret=SECRET) as cmd:
            for i in range(args.repeat):
                image_runs.append(image_start(built.tag, cmd.url, root / "image", f"img-{i}"))
                host_runs.append(host_start(cmd.url, root / "host", f"host-{i}"))
    med = {
        where: {p: statistics.median(r[p] for r in runs) for p in PHASES}
        for where, runs in (("image", image_runs), ("host", host_runs))
    }
    result = {
        "image": built.tag,
        "size": size,
        "layers": len(img.layers(built.tag)),
        "build": "cold" if built.cold else "warm",
        "build_s": round(built.build_s, 1),
        "repeat": args.repeat,
        "median_s": med,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"image {built.tag}: {size}, {result['layers']} layers ({result['build']} build {built.build_s:.1f}s)"
    )
    print(f"worker start, median of {args.repeat} (seconds from `docker run` / process spawn):")
    print(f"  {'phase':<12}{'image':>8}{'host':>8}{'image/host':>12}")
    for phase in PHASES:
        a, b = med["image"][phase], med["host"][phase]
        ratio = f"{a / b:.2f}x" if b > 0 else "-"
        print(f"  {phase:<12}{a:>8.2f}{b:>8.2f}{ratio:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
