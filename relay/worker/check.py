"""``relayctl worker --check``: can this pod carry a run? Every problem on a line of its own.

The image's entrypoint runs it before it execs the worker, so a pod that starts with a typo in
``COMMANDER_URL`` or without its volume stops at once, instead of burning GPU time until the worker
trips over it. It checks with the worker's own rules, so there is one rule set:

- the config (:class:`relay.config.WorkerConfig`: file and environment), every problem it finds;
- :func:`pod_requirements`, what a pod needs on top (the printers hold their commands to it too);
- the pod's own probes (:mod:`relay.worker.preflight`: volume, launcher, a ``file://`` remote).

It acquires nothing and contacts nobody. Exit status 2 when there is a problem, else 0; the lines go
to stderr (a warning does not fail the check).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from relay.config import ConfigError, load_config

EXIT_OK = 0
EXIT_PROBLEM = 2


def pod_requirements(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What a worker on a pod needs beyond a valid config: (key, message) per missing setting.

    ``data`` is the merged settings (file and environment) before validation, so these are reported
    together with the model's own problems. A worker on a laptop may run without a remote
    (checkpoints stay local) and against a commander without a secret (on loopback). A pod may not:
    it is preempted by design and the run resumes on the next pod only from the remote; and a
    commander that pods reach listens on a network address, which it does only with a shared secret.
    """
    problems = []
    if not data.get("remote") and not data.get("hf_repo"):
        problems.append(
            (
                "remote",
                "required on a pod: set HF_REPO (owner/name) or RELAY_REMOTE (hf://owner/name or "
                "file:///path); without one a new pod cannot resume the run",
            )
        )
    if not data.get("relay_shared_secret"):
        problems.append(
            (
                "relay_shared_secret",
                "required on a pod: set RELAY_SHARED_SECRET to the commander's --shared-secret",
            )
        )
    return problems


def check_lines(config_path: str | None, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(problems, notes): one line each. Problems fail the check; notes (a warning, the verdict)
    come only when there is none."""
    from relay.worker.preflight import preflight_problems, volume_warning

    problems: list[str] = []
    try:
        cfg = load_config(config_path, env=env, extra=pod_requirements)
    except ConfigError as exc:
        problems = [str(ConfigError(*problem)) for problem in exc.problems]
        try:  # only what a pod needs is missing: the pod's probes still say what else is wrong
            cfg = load_config(config_path, env=env)
        except ConfigError:
            return problems, []
    problems += [str(p) for p in preflight_problems(cfg)]
    if problems:
        return problems, []  # a warning would only hide the problems
    notes = [w for w in (volume_warning(cfg),) if w]
    notes.append(
        f"check passed: worker {cfg.worker_id}, mode {cfg.mode}, run {cfg.run_id or '(next waiting)'}, "
        f"remote {cfg.remote}, relay_root {cfg.relay_root}"
    )
    return problems, notes


def run_check(
    config_path: str | None, env: Mapping[str, str] | None = None, err: TextIO | None = None
) -> int:
    """Print every problem and note as ``relay worker: ...`` on ``err``; 2 on a problem, else 0."""
    err = err or sys.stderr
    problems, notes = check_lines(config_path, os.environ if env is None else env)
    for line in problems + notes:
        print(f"relay worker: {line}", file=err)
    return EXIT_PROBLEM if problems else EXIT_OK
