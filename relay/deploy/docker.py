"""``relayctl print-docker-command``: the ``docker run`` line for a worker on any GPU host.

``--stop-timeout`` matters: ``docker stop`` sends SIGTERM and, after 10 s by default, SIGKILL.
The worker needs its grace period (GRACE_S, 60 s) to save, sync and hand the lease on, so the
printed command gives it that plus a margin. A ``file://`` remote is mounted at its own path.
"""

from __future__ import annotations

import argparse
from pathlib import PurePosixPath

from relay.deploy.workerenv import (
    DEFAULT_VOLUME_PATH,
    DeployError,
    WorkerEnv,
    add_worker_env_arguments,
    check_relay_root_under,
    env_flags,
    run_printer,
    shell_join,
    validate_name,
)
from relay.urls import parse_remote_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("container")
    g.add_argument("--image", required=True, help="the relay-trainer image, e.g. <user>/relay-trainer:0.1.0")
    g.add_argument(
        "--volume",
        "--host-dir",
        dest="volume",
        required=True,
        help=f"host directory (or docker volume name) mounted at {DEFAULT_VOLUME_PATH}",
    )
    g.add_argument("--name", help="container name")
    g.add_argument("--gpus", default="all", help="value for docker's --gpus (default all; 'none' to omit)")
    g.add_argument(
        "--stop-timeout",
        type=int,
        default=None,
        help="seconds docker stop waits before SIGKILL (default: GRACE_S + 30)",
    )
    g.add_argument("--detach", "-d", action="store_true", help="add -d (run in the background)")
    add_worker_env_arguments(parser)


def render(args: argparse.Namespace, env: WorkerEnv) -> str:
    check_relay_root_under(env, DEFAULT_VOLUME_PATH)
    if not args.volume or ":" in args.volume:
        raise DeployError(
            f"--volume must be a host directory or volume name without ':' (got {args.volume!r})"
        )
    stop_timeout = args.stop_timeout
    if stop_timeout is None:
        stop_timeout = int(float(env.values.get("GRACE_S", "60"))) + 30
    if stop_timeout < 1:
        raise DeployError(f"--stop-timeout must be at least 1 (got {stop_timeout})")
    argv = ["docker", "run"]
    if args.detach:
        argv.append("-d")
    if args.name:
        argv += ["--name", validate_name(args.name, "--name")]
    if args.gpus and args.gpus != "none":
        argv += ["--gpus", args.gpus]
    argv += ["--stop-timeout", str(stop_timeout)]
    argv += ["-v", f"{args.volume}:{DEFAULT_VOLUME_PATH}"]
    argv += _remote_mount(env)
    argv += env_flags("-e", env, args.show_secrets)
    argv.append(args.image)
    return shell_join(argv)


def _remote_mount(env: WorkerEnv) -> list[str]:
    """A ``file://`` remote is a directory every host shares (a network mount): the container sees
    it at the same path, or the worker could not reach it at all."""
    remote = env.values.get("RELAY_REMOTE", "")
    if not remote.startswith("file:"):
        return []
    path = parse_remote_url(remote).path
    assert path is not None
    if PurePosixPath(DEFAULT_VOLUME_PATH) in PurePosixPath(path).parents:
        return []  # already on the pod's volume
    if ":" in str(path) or "," in str(path):
        raise DeployError(
            f"--remote: a file:// remote mounted into docker cannot contain ':' or ',' ({path})"
        )
    env.notes.append(f"note: the file:// remote {path} is mounted at the same path: every host must have it")
    return ["-v", f"{path}:{path}"]


def run(args: argparse.Namespace) -> int:
    return run_printer(args, render)
