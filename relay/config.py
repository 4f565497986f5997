"""The worker's configuration: ``configs/run.yaml`` plus environment overrides, validated once.

A pod is usually configured through its environment (the cloud console's env field), a laptop
through a YAML file; both must give the same validated object, and a mistake in either must stop
the worker *before* it acquires anything, with one line that names the key.  So:

- every field of :class:`WorkerConfig` can be set in the YAML file and overridden by its
  upper-cased environment variable (``grace_s`` -> ``GRACE_S``; ``remote`` -> ``RELAY_REMOTE``),
- the config file path comes from the argument or ``RELAY_RUN_CONFIG``,
- :func:`load_config` raises :class:`ConfigError`, whose ``str()`` is one line naming the key, the
  place the bad value came from, and what is wrong.

The field descriptions are the documentation: :func:`relay.deploy.envref.reference_markdown` renders them as the
environment-variable reference, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.config_errors import ConfigError, one_line, problem
from relay.config_speed import SpeedSettings
from relay.ids import id_problem
from relay.redact import MASK, SECRET_KEYS
from relay.urls import check_repo_id, parse_remote_url
from relay.worker.timing import margin_problem
from relay.yamlio import YamlError, load_yaml

CONFIG_PATH_ENV = "RELAY_RUN_CONFIG"

__all__ = ["CONFIG_PATH_ENV", "ConfigError", "WorkerConfig", "env_names", "load_config", "validate_config"]


def default_worker_id() -> str:
    """Hostname plus a short random suffix: unique per process even when pods share a hostname."""
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname() or "worker").strip(".-") or "worker"
    return f"{host[:100]}-{secrets.token_hex(3)}"


def _env(name: str) -> dict[str, Any]:
    return {"env": name}


class WorkerConfig(SpeedSettings):
    """What one worker needs to carry a run (and, from SpeedSettings, how fast it hands runs on)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    commander_url: str = Field(
        ...,
        description="Base URL of the commander, e.g. http://10.0.0.5:8080. Required.",
        json_schema_extra=_env("COMMANDER_URL"),
    )
    run_id: str | None = Field(
        None,
        description="Run to carry. Empty: take the next waiting run the commander offers (pool mode: a pod serves whatever runs are submitted).",
        json_schema_extra=_env("RUN_ID"),
    )
    worker_id: str = Field(
        default_factory=default_worker_id,
        description="This worker's name in leases and events. Default: hostname plus a short random suffix.",
        json_schema_extra=_env("WORKER_ID"),
    )
    mode: Literal["sft", "rl"] = Field(
        "sft",
        description="Training mode: selects trainer_blackbox/launch_<mode>.sh. A run spec from the commander wins.",
        json_schema_extra=_env("MODE"),
    )
    relay_root: Path = Field(
        Path("/mnt/relay"),
        description="The pod's volume: runs/<run_id>/ holds checkpoints, logs, events.jsonl.",
        json_schema_extra=_env("RELAY_ROOT"),
    )
    remote: str | None = Field(
        None,
        description="Durable checkpoint remote: hf://owner/repo (Hugging Face Hub) or file:///abs/path. "
        "Empty: no remote (checkpoints stay on the volume only).",
        json_schema_extra=_env("RELAY_REMOTE"),
    )
    hf_repo: str | None = Field(
        None,
        description="Shorthand for remote: hf://<hf_repo> (owner/repo).",
        json_schema_extra=_env("HF_REPO"),
    )
    hf_token: SecretStr | None = Field(
        None,
        description="Hugging Face token for the hf:// remote (also passed to the trainer). Never logged.",
        json_schema_extra=_env("HF_TOKEN"),
    )
    relay_shared_secret: SecretStr | None = Field(
        None,
        description="Shared secret sent to the commander as a bearer token. Never logged, not passed to the trainer.",
        json_schema_extra=_env("RELAY_SHARED_SECRET"),
    )
    ckpt_keep_last_n: int = Field(
        3,
        ge=1,
        description="Committed checkpoints kept on the volume.",
        json_schema_extra=_env("CKPT_KEEP_LAST_N"),
    )
    remote_keep_last_n: int | None = Field(
        3,
        ge=1,
        description="Checkpoints kept on the remote after each successful push. Empty: never prune.",
        json_schema_extra=_env("REMOTE_KEEP_LAST_N"),
    )
    grace_s: float = Field(
        60.0,
        gt=0,
        description="On SIGTERM/SIGINT/cancel: how long the trainer gets to save and exit, and the final "
        "upload to finish, before the lease is released anyway.",
        json_schema_extra=_env("GRACE_S"),
    )
    final_sync_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="When the trainer finished: how long to wait for the final checkpoint's upload before "
        "releasing the run as completed anyway (the release detail then says it was not synced).",
        json_schema_extra=_env("FINAL_SYNC_TIMEOUT_S"),
    )
    kill_grace_s: float = Field(
        3.0,
        gt=0,
        description="When the trainer must die now (fenced, hung): seconds between SIGTERM and SIGKILL "
        "of its process group.",
        json_schema_extra=_env("KILL_GRACE_S"),
    )
    hang_timeout_s: float | None = Field(
        900.0,
        gt=0,
        description="No progress line for this long means the trainer hangs: kill and restart it. Empty: off.",
        json_schema_extra=_env("HANG_TIMEOUT_S"),
    )
    startup_timeout_s: float | None = Field(
        1800.0,
        gt=0,
        description="Allowance for the first progress line after a (re)start (model load); the hang "
        "timeout applies when it is longer. Empty: the hang timeout alone.",
        json_schema_extra=_env("STARTUP_TIMEOUT_S"),
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="Trainer restarts (crash or hang) before the run is released as failed.",
        json_schema_extra=_env("MAX_RESTARTS"),
    )
    restart_backoff_s: float = Field(
        5.0,
        ge=0,
        description="Delay before the first restart; doubles for each further one.",
        json_schema_extra=_env("RESTART_BACKOFF_S"),
    )
    restart_backoff_max_s: float = Field(
        120.0, ge=0, description="Cap of the restart delay.", json_schema_extra=_env("RESTART_BACKOFF_MAX_S")
    )
    max_runtime_s: float | None = Field(
        None,
        gt=0,
        description="Wall-clock limit of this worker's training session; when reached the trainer is "
        "stopped gracefully, its checkpoint synced, and the run released as failed. Empty: no limit.",
        json_schema_extra=_env("MAX_RUNTIME_S"),
    )
    renew_safety_margin_s: float = Field(
        5.0,
        gt=0,
        description="Self-fence this long before the lease TTL would run out without a successful renewal, so "
        "the trainer is dead before anyone else may be granted it: >= kill_grace_s + 0.25 + 0.0005 x TTL.",
        json_schema_extra=_env("RENEW_SAFETY_MARGIN_S"),
    )
    report_interval_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between progress reports to the commander.",
        json_schema_extra=_env("REPORT_INTERVAL_S"),
    )
    acquire_backoff_s: float = Field(
        1.0,
        gt=0,
        description="First delay between acquire attempts while another worker holds the run (jittered, doubling).",
        json_schema_extra=_env("ACQUIRE_BACKOFF_S"),
    )
    acquire_backoff_max_s: float = Field(
        15.0,
        gt=0,
        description="Cap of the acquire retry delay.",
        json_schema_extra=_env("ACQUIRE_BACKOFF_MAX_S"),
    )
    commander_wait_s: float = Field(
        300.0,
        ge=0,
        description="How long to keep retrying an unreachable commander before acquiring, before giving up.",
        json_schema_extra=_env("COMMANDER_WAIT_S"),
    )
    idle_exit_s: float = Field(
        0.0,
        ge=-1,
        description="Pool mode (no run_id): when no run waits, exit 0 after this many seconds; 0 at once, "
        "-1 wait for work forever.",
        json_schema_extra=_env("IDLE_EXIT_S"),
    )
    log_max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Size at which logs/trainer.log rotates.",
        json_schema_extra=_env("LOG_MAX_BYTES"),
    )
    log_backups: int = Field(
        5,
        ge=0,
        description="Rotated trainer logs kept (trainer.log.1 ...).",
        json_schema_extra=_env("LOG_BACKUPS"),
    )
    trainer_dir: Path | None = Field(
        None,
        description="Directory holding launch_<mode>.sh. Default: the installed trainer_blackbox package.",
        json_schema_extra=_env("RELAY_TRAINER_DIR"),
    )
    trainer_cmd: str | None = Field(
        None,
        description="The trainer as one shell command, in any Python environment (SLIME_SFT_CMD / SLIME_RL_CMD "
        "are per-mode aliases); transformers Trainers in it are instrumented. A run spec's trainer_cmd wins.",
        json_schema_extra=_env("RELAY_TRAINER_CMD"),
    )
    instrument: bool = Field(
        True,
        description="Instrument transformers Trainers (off: 0).",
        json_schema_extra=_env("RELAY_INSTRUMENT"),
    )
    liveness: Literal["auto", "progress", "any"] = Field(
        "auto",
        description="What shows a trainer alive: progress lines; auto: also its output and new checkpoints "
        "until its first progress line; any: always.",
        json_schema_extra=_env("LIVENESS"),
    )
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form block handed to the trainer as JSON (RELAY_TRAIN_CONFIG). In the environment: "
        "a JSON or YAML mapping.",
        json_schema_extra=_env("TRAIN"),
    )

    @field_validator("commander_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        v = v.strip()
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL, e.g. http://10.0.0.5:8080")
        return v.rstrip("/")

    @field_validator("run_id", "worker_id")
    @classmethod
    def _check_id(cls, v: str | None) -> str | None:
        if v is not None and (problem := id_problem(v)):
            raise ValueError(f"{problem} (got {v!r})")
        return v

    @field_validator("remote")
    @classmethod
    def _check_remote(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parse_remote_url(v)  # RemoteURLError is a ValueError: pydantic reports it under the field
        return v.strip()

    @field_validator("hf_repo")
    @classmethod
    def _check_hf_repo(cls, v: str | None) -> str | None:
        return check_repo_id(v.strip()) if v is not None else None

    @field_validator("relay_root", "trainer_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return v.expanduser().absolute() if v is not None else None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> WorkerConfig:
        if self.hf_repo is not None:
            wanted = f"hf://{self.hf_repo}"
            if self.remote is not None and self.remote != wanted:
                raise ValueError(f"hf_repo: conflicts with remote={self.remote!r}; set only one of them")
            object.__setattr__(self, "remote", wanted)
        if self.remote is not None and self.remote.startswith("hf://") and not self.token():
            # else the run trains, then loses every checkpoint it cannot push to the private repo
            raise ValueError(f"hf_token: required for the remote {self.remote}: set HF_TOKEN (write access)")
        if self.restart_backoff_max_s < self.restart_backoff_s:
            object.__setattr__(self, "restart_backoff_max_s", self.restart_backoff_s)
        if self.acquire_backoff_max_s < self.acquire_backoff_s:
            object.__setattr__(self, "acquire_backoff_max_s", self.acquire_backoff_s)
        if problem := margin_problem(self.renew_safety_margin_s, self.kill_grace_s):
            raise ValueError(f"renew_safety_margin_s: {problem}")
        return self

    # --- helpers the worker uses -------------------------------------------------------------

    def secret(self) -> str | None:
        """The commander secret in clear, for the Authorization header only."""
        return self.relay_shared_secret.get_secret_value() if self.relay_shared_secret else None

    def token(self) -> str | None:
        """The Hugging Face token in clear, for the remote and the trainer only."""
        return self.hf_token.get_secret_value() if self.hf_token else None

    def launcher_dir(self) -> Path:
        """Where launch_<mode>.sh lives."""
        if self.trainer_dir is not None:
            return self.trainer_dir
        import trainer_blackbox

        return Path(trainer_blackbox.__file__).resolve().parent

    def public_dict(self) -> dict[str, Any]:
        """The configuration with secrets masked, for logs and events."""
        data = self.model_dump(mode="json")
        for key in SECRET_KEYS:
            if data.get(key):
                data[key] = MASK
        return data


def env_names() -> dict[str, str]:
    """Field name -> the environment variable that overrides it."""
    names = {}
    for name, field in WorkerConfig.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        names[name] = str(extra.get("env", name.upper()))
    return names


def _is_optional(name: str) -> bool:
    """Whether an empty environment value means "unset it" (None) for this field."""
    return type(None) in typing.get_args(WorkerConfig.model_fields[name].annotation)


def _parse_mapping_env(var: str, raw: str) -> Any:
    try:
        value = load_yaml(raw)
    except YamlError as exc:
        raise ConfigError("train", f"not a JSON/YAML mapping: {exc}", f"env {var}") from None
    return {} if value is None else value


#: More rules on the merged settings (what a pod needs: relay.worker.check): (key, message) per problem.
ExtraRule = Callable[[Mapping[str, Any]], list[tuple[str, str]]]


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    extra: ExtraRule | None = None,
) -> WorkerConfig:
    """Read the YAML file (if any), apply environment overrides, validate; raise ConfigError on any problem."""
    env = os.environ if env is None else env
    chosen = path if path not in (None, "") else env.get(CONFIG_PATH_ENV) or None
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if chosen is not None:
        file = Path(chosen).expanduser()
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(None, "config file not found", str(file)) from None
        except OSError as exc:
            raise ConfigError(None, f"cannot read config file: {exc.strerror or exc}", str(file)) from None
        try:
            loaded = load_yaml(text)
        except YamlError as exc:
            raise ConfigError(None, str(exc), str(file)) from None
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ConfigError(None, f"must be a YAML mapping of keys, got {type(loaded).__name__}", str(file))
        for key, value in loaded.items():
            data[str(key)] = value
            sources[str(key)] = str(file)
    for name, var in env_names().items():
        if var not in env:
            continue
        raw = env[var]
        if raw.strip() == "":
            if _is_optional(name):
                data[name] = None
                sources[name] = f"env {var}"
            continue
        data[name] = _parse_mapping_env(var, raw) if name == "train" else raw.strip()
        sources[name] = f"env {var}"
    if data.get("commander_url") in (None, ""):
        data.pop("commander_url", None)  # reported as missing, with how to set it
    return validate_config(data, sources, extra)


def validate_config(
    data: Mapping[str, Any], sources: Mapping[str, str] | None = None, extra: ExtraRule | None = None
) -> WorkerConfig:
    """Validate already-merged settings (``sources``: key -> where it came from), raising ConfigError
    (one line with every problem, the model's and ``extra``'s; ``.problems`` has them one by one)."""
    sources = sources or {}
    problems = []
    try:
        cfg = WorkerConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = [problem(err, sources, WorkerConfig.model_fields) for err in exc.errors(include_url=False)]
    problems += [(key, msg, sources.get(key)) for key, msg in (extra(data) if extra else [])]
    if problems:
        raise one_line(problems)
    return cfg
