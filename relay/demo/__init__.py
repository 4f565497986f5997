"""``relayctl demo``: the whole relay on one machine, with real parts (see :mod:`relay.demo.runner`).

A commander, a filesystem remote and two worker "pods" train one real SFT run of a tiny model; pod A is
preempted with SIGTERM mid-run and pod B, with an empty volume, takes the run over from the remote and
finishes it.  The timeline and the closing summary say what happened; the exit code says whether the
relay worked (0), did not (1), the options were wrong (2) or the demo was interrupted (130).

Only this module is imported by ``relayctl --help``; the orchestration (and, through it, torch and
transformers) is imported when the demo runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.demo.runner import DemoOptions

__all__ = ["add_arguments", "run", "options_from_args", "OptionsError"]


class OptionsError(ValueError):
    """A combination of options the demo cannot run; str() is one line naming the option."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of the run (default 200)")
    parser.add_argument("--save-steps", type=int, default=20, help="checkpoint every N steps (default 20)")
    parser.add_argument(
        "--preempt-at",
        type=int,
        default=None,
        help="pod-a is preempted once a checkpoint is synced and its progress reaches this step "
        "(default: save-steps + half of it); "
        "must lie after the first checkpoint and before the last step",
    )
    parser.add_argument(
        "--deepspeed",
        type=Path,
        default=None,
        metavar="CONFIG",
        help="train both pods under DeepSpeed with this JSON config (e.g. configs/deepspeed/zero2.json); "
        "checkpoints are then DeepSpeed's, relayed like any other",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="directory for the commander state, the remote and both pods' volumes "
        "(must be empty or absent; default: a new temporary directory)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory for inspection (its path is printed)"
    )
    parser.add_argument(
        "--timeout", type=float, default=170.0, help="give up after this many seconds (default 170)"
    )
    parser.epilog = (
        "exit codes: 0 the relay worked, 1 it did not (the reason is printed), 2 bad options, 130 interrupted"
    )


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """Validated :class:`relay.demo.runner.DemoOptions`; raises OptionsError."""
    from relay.demo.runner import DemoOptions

    steps, save = args.steps, args.save_steps
    if steps < 4:
        raise OptionsError(f"--steps must be at least 4 (got {steps})")
    if not 1 <= save <= steps - 2:
        raise OptionsError(f"--save-steps must be between 1 and --steps - 2 = {steps - 2} (got {save})")
    # the demo preempts pod-a once its first checkpoint is synced and its progress reaches preempt_at, so
    # that step must lie strictly after the first checkpoint and before the end of the run
    preempt = args.preempt_at if args.preempt_at is not None else min(save + max(1, save // 2), steps - 1)
    if not save < preempt < steps:
        raise OptionsError(
            f"--preempt-at must lie after the first checkpoint (step {save}) and before the last step "
            f"({steps}); got {preempt}"
        )
    if not args.timeout > 0:
        raise OptionsError(f"--timeout must be a positive number of seconds (got {args.timeout:g})")
    deepspeed = args.deepspeed
    if deepspeed is not None:
        deepspeed = deepspeed.expanduser().resolve()
        if not deepspeed.is_file():
            raise OptionsError(f"--deepspeed {args.deepspeed}: no such file")
    workdir = args.workdir
    if workdir is not None:
        workdir = workdir.expanduser()
        if workdir.exists() and not workdir.is_dir():
            raise OptionsError(f"--workdir {workdir} exists and is not a directory")
        if workdir.is_dir() and any(workdir.iterdir()):
            raise OptionsError(f"--workdir {workdir} is not empty (pod-b's volume must start empty)")
    return DemoOptions(
        steps=steps,
        save_steps=save,
        preempt_at=preempt,
        workdir=workdir,
        keep=bool(args.keep),
        timeout_s=float(args.timeout),
        loss_every=max(1, steps // 8),
        deepspeed=deepspeed,
    )


def run(args: argparse.Namespace) -> int:
    try:
        opts = options_from_args(args)
    except OptionsError as exc:
        print(f"relayctl demo: error: {exc}", file=sys.stderr)
        return 2
    from relay.demo.runner import Demo

    return Demo(opts).run()
