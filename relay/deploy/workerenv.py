"""The environment a worker pod needs, resolved once for every ``print-*-command``.

Lium, RunPod and plain ``docker run`` differ only in syntax; what goes into the pod's environment
is the same, so it is decided here: from flags first, then the caller's environment
(``COMMANDER_URL``, ``RUN_ID``, ...), then ``--config run.yaml``, validated by the worker's own
:class:`relay.config.WorkerConfig` (one rule, so a printed command cannot start a pod that the
worker or ``docker/entrypoint.sh`` would refuse). Secrets are masked as ``***`` unless
``--show-secrets``: these commands end up in terminals, shell history and chat messages.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, TextIO
from urllib.parse import urlsplit

from relay.ids import InvalidIdError, id_problem, validate_id
from relay.redact import MASK, is_secret_name

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_RELAY_ROOT = "/mnt/relay"
DEFAULT_VOLUME_PATH = "/mnt"

# Settings read from the caller's environment when no flag gives them. Deliberately short: a
# laptop's unrelated variables (TRAIN, MODE of another tool...) are not the pod's configuration;
# everything else comes from --config.
CALLER_ENV = (
    "COMMANDER_URL",
    "RUN_ID",
    "MODE",
    "HF_REPO",
    "RELAY_REMOTE",
    "HF_TOKEN",
    "RELAY_SHARED_SECRET",
    "RELAY_ROOT",
)

# flag dest -> (environment variable, config key); the flag's value goes in as that variable.
_FLAG_ENV = {
    "commander_url": ("COMMANDER_URL", "commander_url"),
    "run_id": ("RUN_ID", "run_id"),
    "worker_id": ("WORKER_ID", "worker_id"),
    "mode": ("MODE", "mode"),
    "hf_repo": ("HF_REPO", "hf_repo"),
    "remote": ("RELAY_REMOTE", "remote"),
    "hf_token": ("HF_TOKEN", "hf_token"),
    "shared_secret": ("RELAY_SHARED_SECRET", "relay_shared_secret"),
    "relay_root": ("RELAY_ROOT", "relay_root"),
}
_KEY_FLAG = {key: "--" + dest.replace("_", "-") for dest, (_, key) in _FLAG_ENV.items()}

# Order of the emitted variables: the ones a reader looks for first.
_FIRST = ("COMMANDER_URL", "RUN_ID", "WORKER_ID", "MODE", "HF_REPO", "RELAY_REMOTE", "RELAY_ROOT")
_LAST = ("RELAY_SHARED_SECRET", "HF_TOKEN")


class DeployError(Exception):
    """Bad input for a print-*-command: ``problems`` lists each one as a line a user can act on."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__(problems[0] if len(problems) == 1 else f"{len(problems)} problems")

    def lines(self) -> list[str]:
        """The problem, or a count followed by one indented line per problem."""
        if len(self.problems) == 1:
            return [self.problems[0]]
        return [f"{len(self.problems)} problems:", *(f"  - {p}" for p in self.problems)]


@dataclass
class WorkerEnv:
    """The pod's environment, in print order, plus notes for stderr (never mixed into stdout)."""

    values: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def shown(self, show_secrets: bool) -> dict[str, str]:
        """The values as they are printed: secrets replaced by ``***`` unless asked for."""
        if show_secrets:
            return dict(self.values)
        return {k: (MASK if is_secret_name(k) and v else v) for k, v in self.values.items()}

    def pairs(self, show_secrets: bool) -> list[str]:
        """``KEY=VALUE`` strings (unquoted; callers quote each as one argument)."""
        return [f"{k}={v}" for k, v in self.shown(show_secrets).items()]

    def has_secrets(self) -> bool:
        return any(is_secret_name(k) and v for k, v in self.values.items())


def add_worker_env_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every print-*-command shares: what the worker in the pod needs to know."""
    g = parser.add_argument_group("worker settings (flag, else environment variable, else --config)")
    g.add_argument("--commander-url", help="the commander, reachable FROM the pod (env COMMANDER_URL)")
    g.add_argument("--run-id", help="run to carry; omit to take the next waiting run (env RUN_ID)")
    g.add_argument(
        "--worker-id", help="worker name (default: each pod names itself; never taken from env or config)"
    )
    g.add_argument("--mode", choices=("sft", "rl"), help="training mode (env MODE; default sft)")
    g.add_argument("--hf-repo", help="private Hub repo owner/name for checkpoints (env HF_REPO)")
    g.add_argument("--remote", help="checkpoint remote hf://owner/name or file:///path (env RELAY_REMOTE)")
    g.add_argument("--hf-token", help="Hub token with write access (env HF_TOKEN)")
    g.add_argument("--shared-secret", help="the commander's shared secret (env RELAY_SHARED_SECRET)")
    g.add_argument(
        "--relay-root", help=f"run directories inside the pod (env RELAY_ROOT; default {DEFAULT_RELAY_ROOT})"
    )
    g.add_argument(
        "--config",
        metavar="RUN_YAML",
        help="a worker config (configs/run.yaml): every key it sets is passed on as its variable",
    )
    g.add_argument(
        "--env",
        dest="extra_env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another variable for the pod, e.g. SLIME_SFT_CMD='bash run.sh' (repeatable)",
    )
    g.add_argument(
        "--show-secrets", action="store_true", help="print HF_TOKEN and RELAY_SHARED_SECRET instead of ***"
    )


def resolve_worker_env(args: argparse.Namespace, environ: Mapping[str, str]) -> WorkerEnv:
    """Flags, then ``environ``, then ``--config``; validated by WorkerConfig and held to what a pod
    needs (:func:`relay.worker.check.pod_requirements`): the rules of the pod's own check, so a
    printed command cannot start a pod that the image's entrypoint would refuse. Raises DeployError."""
    from relay.config import env_names

    merged: dict[str, str] = {k: environ[k] for k in CALLER_ENV if k in environ}
    for dest, (var, _key) in _FLAG_ENV.items():
        value = getattr(args, dest, None)
        if value is not None:
            merged[var] = str(value)
    # HF_REPO and RELAY_REMOTE name one setting: a flag for one overrides the caller's env for both.
    if args.hf_repo is not None and args.remote is None:
        merged.pop("RELAY_REMOTE", None)
    if args.remote is not None and args.hf_repo is None:
        merged.pop("HF_REPO", None)
    problems: list[str] = []
    for dest, what in (("run_id", "--run-id"), ("worker_id", "--worker-id")):
        value = getattr(args, dest, None)
        if value is not None and value != "":
            try:
                validate_id(value, what)
            except InvalidIdError as exc:
                problems.append(str(exc))
                merged.pop(_FLAG_ENV[dest][0], None)  # named once: the config check goes on without it
    cfg = _load(args, merged, problems)
    names = env_names()
    if cfg is None:
        raise DeployError(*problems, *_extra_env(args.extra_env, {}, names))

    data = cfg.model_dump(mode="json")
    values: dict[str, str] = {}
    for key in cfg.model_fields_set:
        if key in ("worker_id", "hf_token", "relay_shared_secret", "remote", "hf_repo"):
            continue  # handled below: per-pod identity, secrets, and the one remote setting
        if _is_default(cfg, key):
            continue  # nothing to pass on: the pod's worker has the same default
        values[names[key]] = _env_value(data[key])
    values["MODE"] = cfg.mode  # the entrypoint wants it explicit, even when it is the default
    if args.worker_id is not None:
        values["WORKER_ID"] = cfg.worker_id
    _remote_and_secrets(cfg, values)
    problems += _extra_env(args.extra_env, values, names)
    if problems:
        raise DeployError(*problems)

    notes = []
    url_host = urlsplit(cfg.commander_url).hostname or ""
    if url_host in ("localhost", "::1") or url_host.startswith("127."):
        notes.append(
            f"warning: COMMANDER_URL={cfg.commander_url} is loopback: inside a pod or container that is "
            "the pod itself; use an address the pod can reach"
        )
    return WorkerEnv(values=_ordered(values), notes=notes)


def _remote_and_secrets(cfg: Any, values: dict[str, str]) -> None:
    """Add the remote, the shared secret and the Hub token to ``values`` (the pod rules hold: a
    remote and the secret are there, and a token when the remote is hf://)."""
    if cfg.hf_repo is not None:
        values["HF_REPO"] = cfg.hf_repo
    else:
        values["RELAY_REMOTE"] = cfg.remote
    values["RELAY_SHARED_SECRET"] = cfg.secret()
    if cfg.token():
        values["HF_TOKEN"] = cfg.token()


def _load(args: argparse.Namespace, merged: dict[str, str], problems: list[str]) -> Any:
    """The worker's config from ``merged`` (and --config) under the pod rules, or None; every problem
    goes to ``problems``."""
    from relay.config import ConfigError, load_config
    from relay.worker.check import pod_requirements

    try:
        return load_config(args.config, env=merged, extra=pod_requirements)
    except ConfigError as exc:
        problems += _config_error_lines(exc, args)
        return None


def _extra_env(items: list[str], values: dict[str, str], names: dict[str, str]) -> list[str]:
    """Check and add the --env KEY=VALUE items; returns their problems."""
    problems = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME_RE.fullmatch(key):
            shown = key if sep else "(no '=')"  # never echo a value: it may be a credential
            problems.append(f"--env {shown}: expected KEY=VALUE with KEY a variable name")
        elif key in values or key in names.values():
            flag = _KEY_FLAG.get(next((k for k, v in names.items() if v == key), ""), "--config")
            problems.append(f"--env {key}=...: {key} is a worker setting, give it with {flag} instead")
        else:
            values[key] = value
    return problems


def _config_error_lines(exc: Any, args: argparse.Namespace) -> list[str]:
    """One line per problem of the worker's ConfigError, each naming its flag when it came from one."""
    from relay.config import ConfigError

    return [_config_error_line(ConfigError(key, msg, source), args) for key, msg, source in exc.problems]


# A setting the worker's rules require, said the printers' way: with the flags that give it.
_MISSING = {
    "commander_url": "no commander: pass --commander-url or set COMMANDER_URL (an address the pod can reach)",
    "remote": "no checkpoint remote: pass --hf-repo owner/name or --remote hf://owner/name|file:///path "
    "(or set HF_REPO / RELAY_REMOTE); without one a new pod cannot resume the run",
    "relay_shared_secret": "no shared secret: pass --shared-secret or set RELAY_SHARED_SECRET "
    "(the commander's --shared-secret)",
    "hf_token": "no Hugging Face token for the hf:// remote: pass --hf-token or set HF_TOKEN (write access)",
}


def _config_error_line(exc: Any, args: argparse.Namespace) -> str:
    """The worker's one-line ConfigError, naming the flag that gave the bad value or would give the
    missing one."""
    key = exc.key or ""
    dest = next((d for d, (_, k) in _FLAG_ENV.items() if k == key), None)
    if dest is not None and getattr(args, dest, None) is not None:
        return f"{_KEY_FLAG[key]}: {exc.message}"
    if key in _MISSING and exc.message.startswith("required"):
        return _MISSING[key]
    return str(exc)


def _is_default(cfg: Any, key: str) -> bool:
    info = type(cfg).model_fields[key]
    value = getattr(cfg, key)
    if info.default_factory is not None:
        return not value
    return value == info.default


def _env_value(value: Any) -> str:
    """A config value as the environment variable the worker parses back (TRAIN as JSON)."""
    if value is None:
        return ""  # empty means "unset" for the optional settings
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _ordered(values: Mapping[str, str]) -> dict[str, str]:
    first = [k for k in _FIRST if k in values]
    last = [k for k in _LAST if k in values]
    middle = sorted(k for k in values if k not in first and k not in last)
    return {k: values[k] for k in (*first, *middle, *last)}


def check_relay_root_under(env: WorkerEnv, mount_path: str) -> None:
    """Warn when the run directories would not land on the volume mounted at ``mount_path``."""
    root = PurePosixPath(env.values.get("RELAY_ROOT", DEFAULT_RELAY_ROOT))
    mount = PurePosixPath(mount_path)
    if root != mount and mount not in root.parents:
        env.notes.append(
            f"warning: RELAY_ROOT={root} is not under the volume mounted at {mount}; "
            "local checkpoints would die with the pod"
        )


def validate_name(value: str, what: str) -> str:
    """Pod and container names follow the id rule, so they never need quoting surprises."""
    problem = id_problem(value)
    if problem:
        raise DeployError(f"{what}: {problem} (got {value!r})")
    return value


def default_pod_name(env: WorkerEnv) -> str:
    """relay-<run_id>, or relay-<mode>-worker for a pool worker."""
    run_id = env.values.get("RUN_ID")
    name = f"relay-{run_id}" if run_id else f"relay-{env.values['MODE']}-worker"
    return name[:128]


def shell_join(argv: Iterable[str]) -> str:
    """One copy-pasteable line; every argument quoted for a POSIX shell."""
    return " ".join(shlex.quote(a) for a in argv)


def env_flags(flag: str, env: WorkerEnv, show_secrets: bool) -> list[str]:
    """``[flag, K=V, flag, K=V, ...]`` for CLIs that take one variable per flag."""
    out: list[str] = []
    for pair in env.pairs(show_secrets):
        out += [flag, pair]
    return out


def run_printer(
    args: argparse.Namespace,
    render: Callable[[argparse.Namespace, WorkerEnv], str],
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Resolve the env, render, print; bad input is one line on stderr and exit status 2."""
    import os

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        env = resolve_worker_env(args, os.environ if environ is None else environ)
        text = render(args, env)
    except DeployError as exc:
        first, *rest = exc.lines()
        print(
            f"relayctl {getattr(args, 'command', None) or 'print-command'}: error: {first}",
            *rest,
            sep="\n",
            file=err,
        )
        return 2
    out.write(text if text.endswith("\n") else text + "\n")
    for note in env.notes:
        print(note, file=err)
    if env.has_secrets() and not args.show_secrets:
        print("note: secrets are shown as *** ; add --show-secrets to print them", file=err)
    return 0
