"""``relayctl print-lium-command``: the ``lium up`` line that starts one worker pod on Lium.

Printed, not run: the user reviews it (GPU choice, cost) and runs it with their own Lium
credentials. The Lium template names the image (built from docker/Dockerfile); the volume is
mounted at /mnt, where the worker keeps its run directories (RELAY_ROOT=/mnt/relay).
"""

from __future__ import annotations

import argparse

from relay.deploy.workerenv import (
    WorkerEnv,
    add_worker_env_arguments,
    default_pod_name,
    env_flags,
    run_printer,
    shell_join,
    validate_name,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pod")
    g.add_argument("--template-id", required=True, help="Lium template whose image is relay-trainer")
    g.add_argument(
        "--pod-name",
        "--name",
        dest="pod_name",
        help="pod name (default relay-<run_id> or relay-<mode>-worker)",
    )
    g.add_argument(
        "--volume", help="volume for /mnt, as lium up takes it (e.g. id:<volume_huid>); strongly recommended"
    )
    g.add_argument("--executor", help="executor (index or id from `lium ls`); default: let lium choose")
    g.add_argument("--gpu", help="GPU type filter for lium up, e.g. H100")
    add_worker_env_arguments(parser)


def render(args: argparse.Namespace, env: WorkerEnv) -> str:
    name = validate_name(args.pod_name or default_pod_name(env), "--pod-name")
    argv = ["lium", "up"]
    if args.executor:
        argv.append(args.executor)
    argv += ["--name", name, "--template_id", args.template_id]
    if args.volume:
        argv += ["--volume", args.volume]
    else:
        env.notes.append(
            "warning: no --volume: the pod's /mnt is its own disk; local checkpoints die with it "
            "(the remote still has the synced ones)"
        )
    if args.gpu:
        argv += ["--gpu", args.gpu]
    argv += env_flags("--env", env, args.show_secrets)
    return shell_join(argv)


def run(args: argparse.Namespace) -> int:
    return run_printer(args, render)
