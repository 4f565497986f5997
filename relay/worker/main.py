"""``relayctl worker [--config PATH]``: carry a run on this pod (also ``python -m relay.worker``).

``--check`` only checks that this pod could (:mod:`relay.worker.check`), ``--env-reference`` prints
the settings.

Exit codes (see ``relay.worker.lifecycle.EXIT_CODES``):

==  ==========================================================================================
0   done: the run completed, was preempted and handed on (SIGTERM/SIGINT), was cancelled, or
    there was nothing to do (the run is closed; pool mode and no run waits)
1   internal error (a bug; the traceback is in the log)
2   configuration error (one line naming the key), or the pod cannot carry a run: relay_root
    not writable, the trainer launcher missing, a file:// remote not writable
    (``relay.worker.preflight``); nothing was acquired
3   fenced: the lease was lost (409, no renewal for ttl - margin, the remote refused our epoch);
    the trainer was killed and nothing more was committed or synced
4   the run failed on this worker (crash loop, hang loop, max_runtime_s, missing launcher,
    failed recovery) and was released as failed
5   the commander was unreachable for commander_wait_s, or refused the shared secret
==  ==========================================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading

from relay.config import CONFIG_PATH_ENV, ConfigError, WorkerConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="PATH",
        help=f"worker config YAML (default: ${CONFIG_PATH_ENV}; every key can also come from its env var)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("RELAY_LOG_LEVEL", "INFO"),
        help="log level (env RELAY_LOG_LEVEL, default INFO)",
    )
    parser.add_argument(
        "--env-reference", action="store_true", help="print the environment-variable reference and exit"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the config, what a pod needs and the pod's volume, print every problem and exit "
        "(2: a problem, 0: ready); acquires nothing (the image's entrypoint runs it first)",
    )
    parser.epilog = (
        "exit codes: 0 done/preempted/cancelled/nothing to do, 2 config, 3 fenced, 4 failed, 5 commander"
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "env_reference", False):
        from relay.deploy.envref import reference_markdown

        sys.stdout.write(reference_markdown())
        return 0
    if getattr(args, "check", False):
        from relay.worker.check import run_check

        return run_check(args.config)
    from relay.worker.agent import EXIT_CONFIG, EXIT_FENCED, EXIT_INTERNAL, Agent

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"relay worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from relay.worker.preflight import PreflightError, preflight

    try:  # the volume, the launcher, a file:// remote: before anything is acquired
        preflight(cfg)
    except PreflightError as exc:
        print(f"relay worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format=f"%(asctime)s relay-worker[{cfg.worker_id}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "huggingface_hub", "filelock"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with contextlib.suppress(
        AttributeError, ValueError, OSError
    ):  # `kill -USR1 <pid>`: dump every thread's stack
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    logger = logging.getLogger("relay")
    logger.info("%s", start_line(cfg))
    logger.debug("full config: %s", cfg.public_dict())
    try:
        code = asyncio.run(Agent(cfg).run())
    except Exception:
        logging.getLogger("relay").exception("internal error")
        code = EXIT_INTERNAL
    if code == EXIT_FENCED or any(
        t.is_alive() and not t.daemon and t is not threading.main_thread() for t in threading.enumerate()
    ):
        # a fenced worker must not linger on anything (an upload, a hash): leave now
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
    return code


def start_line(cfg: WorkerConfig) -> str:
    """The worker's first line: what it will carry, from where, to where (the full config is at debug)."""
    what = f"run {cfg.run_id}" if cfg.run_id else f"pool mode (the next waiting {cfg.mode} run)"
    remote = cfg.remote or "no remote (checkpoints stay on this volume)"
    return (
        f"worker {cfg.worker_id} starting: {what}, mode {cfg.mode}, commander {cfg.commander_url}, "
        f"volume {cfg.relay_root}, remote {remote}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relayctl worker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
