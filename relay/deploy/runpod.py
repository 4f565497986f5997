"""``relayctl print-runpod-command``: a ``runpodctl create pod`` line and the same pod as the JSON
body for RunPod's REST API (``POST https://rest.runpod.io/v1/pods``).

Both are printed because they serve different users: the CLI line for a person at a terminal,
the JSON for a backend that launches pods itself (and the only way to ask for an interruptible
(spot) pod, which runpodctl has no flag for). The pod volume is mounted at /mnt, where the
worker keeps its run directories.
"""

from __future__ import annotations

import argparse
import json

from relay.deploy.workerenv import (
    DEFAULT_VOLUME_PATH,
    DeployError,
    WorkerEnv,
    add_worker_env_arguments,
    check_relay_root_under,
    default_pod_name,
    env_flags,
    run_printer,
    shell_join,
    validate_name,
)

REST_URL = "https://rest.runpod.io/v1/pods"
DEFAULT_GPU_TYPE = "NVIDIA H100 80GB HBM3"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pod")
    g.add_argument("--image", required=True, help="the relay-trainer image, e.g. <user>/relay-trainer:0.1.0")
    g.add_argument("--name", "--pod-name", dest="name", help="pod name (default relay-<run_id>)")
    g.add_argument(
        "--gpu-type", default=DEFAULT_GPU_TYPE, help=f"RunPod GPU type id (default {DEFAULT_GPU_TYPE!r})"
    )
    g.add_argument("--gpu-count", type=int, default=1, help="GPUs per pod (default 1)")
    g.add_argument("--volume-size", type=int, default=100, help="pod volume in GB (default 100)")
    g.add_argument(
        "--volume-path",
        default=DEFAULT_VOLUME_PATH,
        help=f"where the volume is mounted (default {DEFAULT_VOLUME_PATH})",
    )
    g.add_argument("--container-disk", type=int, default=30, help="container disk in GB (default 30)")
    g.add_argument("--network-volume-id", help="attach this network volume instead of a pod volume")
    g.add_argument("--cloud-type", choices=("SECURE", "COMMUNITY"), help="RunPod cloud (default: any)")
    g.add_argument(
        "--interruptible", action="store_true", help="spot pod (REST body only: runpodctl has no such flag)"
    )
    g.add_argument(
        "--format", choices=("both", "cli", "json"), default="both", help="what to print (default both)"
    )
    add_worker_env_arguments(parser)


def _check(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--gpu-count", args.gpu_count, 1),
        ("--volume-size", args.volume_size, 1),
        ("--container-disk", args.container_disk, 1),
    ):
        if value < low:
            raise DeployError(f"{flag} must be at least {low} (got {value})")
    if not args.volume_path.startswith("/"):
        raise DeployError(f"--volume-path must be absolute (got {args.volume_path!r})")


def rest_body(args: argparse.Namespace, env: WorkerEnv, name: str) -> dict[str, object]:
    """The JSON body of POST /v1/pods, field names as RunPod's REST API spells them."""
    body: dict[str, object] = {
        "name": name,
        "imageName": args.image,
        "gpuTypeIds": [args.gpu_type],
        "gpuCount": args.gpu_count,
        "containerDiskInGb": args.container_disk,
        "volumeMountPath": args.volume_path,
    }
    if args.network_volume_id:
        body["networkVolumeId"] = args.network_volume_id
    else:
        body["volumeInGb"] = args.volume_size
    if args.cloud_type:
        body["cloudType"] = args.cloud_type
    if args.interruptible:
        body["interruptible"] = True
    body["env"] = env.shown(args.show_secrets)
    return body


def cli_argv(args: argparse.Namespace, env: WorkerEnv, name: str) -> list[str]:
    argv = ["runpodctl", "create", "pod", "--name", name, "--imageName", args.image]
    argv += ["--gpuType", args.gpu_type, "--gpuCount", str(args.gpu_count)]
    argv += ["--containerDiskSize", str(args.container_disk)]
    if args.network_volume_id:
        argv += ["--networkVolumeId", args.network_volume_id]
    else:
        argv += ["--volumeSize", str(args.volume_size)]
    argv += ["--volumePath", args.volume_path]
    if args.cloud_type == "SECURE":
        argv.append("--secureCloud")
    elif args.cloud_type == "COMMUNITY":
        argv.append("--communityCloud")
    argv += env_flags("--env", env, args.show_secrets)
    return argv


def render(args: argparse.Namespace, env: WorkerEnv) -> str:
    _check(args)
    name = validate_name(args.name or default_pod_name(env), "--name")
    check_relay_root_under(env, args.volume_path)
    parts = []
    if args.format in ("both", "cli"):
        if args.interruptible:
            env.notes.append("note: runpodctl has no spot flag; use the REST body for an interruptible pod")
        if args.format == "both":
            parts.append("# runpodctl")
        parts.append(shell_join(cli_argv(args, env, name)))
    if args.format in ("both", "json"):
        if args.format == "both":
            parts.append(f"# REST API: POST {REST_URL} (header Authorization: Bearer $RUNPOD_API_KEY), body:")
        parts.append(json.dumps(rest_body(args, env, name), indent=2))
    return "\n".join(parts) + "\n"


def run(args: argparse.Namespace) -> int:
    return run_printer(args, render)
