"""relayctl: one entry point, one module per subcommand.

Each subcommand lives in the module that owns its concern and exposes
``add_arguments(parser)`` and ``run(args) -> int``.  This file only wires them
together, lazily, so ``relayctl status`` on a CPU box never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from relay import __version__

# name -> (module, one-line help).  The module is imported only when its command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("relay.commander.serve", "run the commander (lease arbitration and run registry)"),
    "worker": ("relay.worker.main", "run a worker: acquire a run, train it, hand it on when preempted"),
    "status": ("relay.ctl.status", "show commander health and runs, or one run in detail"),
    "cancel": ("relay.ctl.cancel", "ask the commander to cancel a run"),
    "submit": ("relay.ctl.submit", "submit a run spec (YAML) to the commander"),
    "logs": ("relay.ctl.logs", "print a run's log timeline, optionally following it"),
    "pull": ("relay.ctl.pull", "download a run's final model or a checkpoint from its remote, verified"),
    "demo": ("relay.demo", "the relay demo: train, preempt, resume on another 'pod', finish"),
    "print-lium-command": ("relay.deploy.lium", "print a `lium up` command for a worker pod"),
    "print-runpod-command": ("relay.deploy.runpod", "print a `runpodctl create pod` command and REST body"),
    "print-docker-command": ("relay.deploy.docker", "print a `docker run` command for a worker"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Every command is listed; only ``selected`` has its module imported and its options added."""
    parser = argparse.ArgumentParser(prog="relayctl", description="relay-trainer control tool")
    parser.add_argument("--version", action="version", version=f"relay-trainer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `relayctl status | head`: the reader left; that is not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
