"""A third-party trainer relayed with zero glue against the same command run bare.

The LLaMA-Factory recipe of the tests (``llamafactory-cli train x.yaml``, LoRA SFT on the tiny model, in
its own environment from tools/trainer_envs.sh) runs:

  bare      the command alone, as the user runs it today;
  relayed   the same command with the RELAY_* environment a worker gives it and the instrumentation on
            its PYTHONPATH, uninterrupted (checkpoints staged + COMPLETE, progress lines, final export);
  preempted the relay story: SIGTERM after step ``--stop-at`` (saved), then a run resumed from that
            checkpoint in another directory (relay_testkit.third_party.relay_experiment).

Figures, side by side:

  samples_per_s       LLaMA-Factory's own ``train_samples_per_second`` (train loop only, from its
                      all_results.json), bare vs relayed, and their ratio (best of ``--repeat``)
  wall_s              whole command, process start to exit
  steps_lost          last step of the preempted run minus the step its successor resumed from (0 expected)
  max_weight_diff     largest |w_relayed - w_bare| of the final adapter after the preemption and resume

Usage::

    .venv/bin/python bench/byo_trainer_bench.py [--repeat 2] [--stop-at 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relay_testkit.third_party import (  # noqa: E402
    base_env,
    kill_group,
    max_weight_diff,
    read_lines,
    relay_env,
    relay_experiment,
    start,
    tail,
)
from relay_testkit.tiny_model import build_tiny_model, prompt_completion_rows, write_jsonl  # noqa: E402
from relay_testkit.trainer_recipes import llamafactory_recipe  # noqa: E402


def one_run(recipe, env: dict[str, str], cwd: Path, log: Path, results: Path) -> dict[str, float]:
    t0 = time.monotonic()
    proc = start(recipe.command, env, cwd, log)
    try:
        if proc.wait(timeout=600) != 0:
            raise SystemExit(f"run failed, see {log}:\n{tail(log)}")
    finally:
        kill_group(proc)
    wall = time.monotonic() - t0
    doc = json.loads(results.read_text())
    return {"wall_s": wall, "samples_per_s": float(doc["train_samples_per_second"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--stop-at", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="byo-bench-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")
        data = write_jsonl(root / "pc" / "train.jsonl", prompt_completion_rows(32))
        recipe = llamafactory_recipe(root / "recipe", model, data)
        bare, relayed = [], []
        for i in range(args.repeat):  # alternate: other work on the machine slows either side alike
            b = root / f"bare{i}"
            bare.append(
                one_run(recipe, base_env(), b, root / f"bare{i}.log", b / "user_out" / "all_results.json")
            )
            r = root / f"relayed{i}"
            relayed.append(
                one_run(recipe, relay_env(r), r, root / f"relayed{i}.log", r / "final" / "all_results.json")
            )
            assert [x["step"] for x in read_lines(r / "progress.jsonl")] == list(range(1, 11))
        exp = relay_experiment(root / "preempt", recipe, stop_at=args.stop_at)
        lost = max(x["step"] for x in exp.b_lines) - args.stop_at
        diff = max_weight_diff(exp.bare_final / recipe.weights, exp.relay_final / recipe.weights)
    best_bare = max(x["samples_per_s"] for x in bare)
    best_relayed = max(x["samples_per_s"] for x in relayed)
    figures = {
        "trainer": "llamafactory 0.9.5 (LoRA SFT, tiny Llama, CPU)",
        "bare_samples_per_s": best_bare,
        "relayed_samples_per_s": best_relayed,
        "samples_per_s_ratio": best_relayed / best_bare,
        "bare_wall_s": min(x["wall_s"] for x in bare),
        "relayed_wall_s": min(x["wall_s"] for x in relayed),
        "steps_lost_per_preemption": lost,
        "max_weight_diff": diff,
    }
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        for key, value in figures.items():
            print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
