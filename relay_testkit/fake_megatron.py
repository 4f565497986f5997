"""A trainer process that behaves like Megatron-LM on disk and in its log, for tests (Megatron needs CUDA).

It takes Megatron's own flags for what the relay touches and does what Megatron does with them
(megatron/training/checkpointing.py, training.py):

- ``--save DIR --save-interval N``: every N iterations, each "rank" writes
  ``DIR/iter_%07d/mp_rank_00/model_optim_rng.pt``, then (after the barrier) rank 0 writes
  ``DIR/latest_checkpointed_iteration.txt`` holding the iteration, last.  The last iteration is saved too.
- ``--load DIR``: reads ``DIR/latest_checkpointed_iteration.txt``, loads ``DIR/iter_%07d`` and goes on at
  the next iteration; a missing tracker is a cold start ("could not find the metadata file").
- ``--exit-signal-handler``: SIGTERM is only noted; at the end of the iteration in flight the state is
  saved and the process exits 0 ("exiting program after receiving SIGTERM."), as Megatron's
  ``checkpoint_and_decide_exit`` does.  Without it, SIGTERM kills the process like Megatron's default.
- ``--train-iters N --log-interval K``: one log line per K iterations in Megatron's exact format.

The "model" is a few floats updated deterministically per iteration, so an interrupted and resumed run
ends with exactly the weights of an uninterrupted one.  Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"


def log_line(iteration: int, train_iters: int, *, lr: float, loss: float, grad_norm: float, ms: float) -> str:
    """One training_log line exactly as Megatron-LM formats it (megatron/training/training.py)."""
    s = f" [{datetime.now().strftime('%Y-%m-%d %H:%M:%S.%f')}]"
    s += f" iteration {iteration:8d}/{train_iters:8d} |"
    s += f" consumed samples: {iteration * 8:12d} |"
    s += f" elapsed time per iteration (ms): {ms:.1f} |"
    s += f" learning rate: {lr:.6E} |"
    s += f" global batch size: {8:5d} |"
    s += " {}: {:.6E} |".format("lm loss", loss)
    s += f" loss scale: {1.0:.1f} |"
    s += f" grad norm: {grad_norm:.3f} |"
    s += f" number of skipped iterations: {0:3d} |"
    s += f" number of nan iterations: {0:3d} |"
    return s


def save(save_dir: Path, iteration: int, weights: list[float]) -> None:
    ckpt = save_dir / f"iter_{iteration:07d}" / "mp_rank_00"
    ckpt.mkdir(parents=True, exist_ok=True)
    with open(ckpt / "model_optim_rng.pt", "w", encoding="utf-8") as fh:
        json.dump({"iteration": iteration, "weights": weights}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    with open(save_dir / TRACKER, "w", encoding="utf-8") as fh:  # after every rank saved: the barrier
        fh.write(str(iteration))
    print(f"  successfully saved checkpoint from iteration {iteration:7d} to {save_dir}", flush=True)


def load(load_dir: Path | None) -> tuple[int, list[float]]:
    if load_dir is None or not (load_dir / TRACKER).is_file():
        print(
            f"WARNING: could not find the metadata file {load_dir}/{TRACKER}; starting from random",
            flush=True,
        )
        return 0, [1.0, -0.5, 0.25]
    iteration = int((load_dir / TRACKER).read_text().strip())
    state = json.loads((load_dir / f"iter_{iteration:07d}" / "mp_rank_00" / "model_optim_rng.pt").read_text())
    print(f"  successfully loaded checkpoint from {load_dir} at iteration {iteration}", flush=True)
    return iteration, state["weights"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fake_megatron")
    p.add_argument("--save", type=Path, required=True)
    p.add_argument("--load", type=str, default=None)  # empty: nothing to load (as Megatron reads it)
    p.add_argument("--save-interval", type=int, default=0)
    p.add_argument("--train-iters", type=int, required=True)
    p.add_argument("--log-interval", type=int, default=1)
    p.add_argument("--exit-signal-handler", action="store_true")
    p.add_argument("--seconds-per-iteration", type=float, default=0.05)
    args = p.parse_args(argv)
    stop = {"sigterm": False}
    if args.exit_signal_handler:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
    iteration, w = load(Path(args.load) if args.load else None)
    args.save.mkdir(parents=True, exist_ok=True)
    while iteration < args.train_iters:
        t0 = time.monotonic()
        time.sleep(args.seconds_per_iteration)
        lr = 1e-3 * (1 - iteration / args.train_iters)
        grad = [x + 0.1 * math.sin(iteration + i) for i, x in enumerate(w)]
        w = [x - lr * 100 * g for x, g in zip(w, grad, strict=True)]
        iteration += 1
        loss = sum(x * x for x in w)
        if iteration % args.log_interval == 0:
            norm = math.sqrt(sum(g * g for g in grad))
            ms = (time.monotonic() - t0) * 1000
            print(log_line(iteration, args.train_iters, lr=lr, loss=loss, grad_norm=norm, ms=ms), flush=True)
        if stop["sigterm"]:
            save(args.save, iteration, w)
            print(f"[{datetime.now()}] exiting program after receiving SIGTERM.", flush=True)
            return 0
        if args.save_interval and iteration % args.save_interval == 0:
            save(args.save, iteration, w)
    if not (args.save_interval and iteration % args.save_interval == 0):
        save(args.save, iteration, w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
