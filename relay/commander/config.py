"""The commander's settings: one pydantic model, read from flags, then the environment, then defaults.

``relayctl serve`` builds its flags from :class:`CommanderConfig` and loads it with
:func:`load_commander_config`; a bad value stops it with one line naming the flag or variable it
came from.  The field descriptions are the documentation: :func:`reference_rows` feeds the README's
commander settings table (``relay.deploy.envref`` writes it, a test checks it), as the worker's
:class:`relay.config.WorkerConfig` feeds the worker's.

It lives in the commander package, not beside ``WorkerConfig`` in ``relay/config.py``: the two
never share a field, a pod never loads the commander's settings, and the commander never loads
the worker's.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

MIN_TTL_S = 1.0


def _setting(
    default: Any, description: str, *, env: str | None = None, flag: str | None = None, **rules: Any
) -> Any:
    """A field with where it is read from: ``flag`` (wins) and ``env``."""
    extra = {key: value for key, value in (("env", env), ("flag", flag)) if value}
    return Field(default, description=description, json_schema_extra=extra, **rules)


class CallbackSettings(BaseModel):
    """How run callbacks are delivered (``relay.commander.callbacks``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float = _setting(
        60.0,
        "Heartbeat period while a run is running.",
        env="RELAY_CALLBACK_INTERVAL_S",
        gt=0,
        allow_inf_nan=False,
    )
    timeout_s: float = _setting(
        10.0,
        "One callback POST, connect to last byte.",
        env="RELAY_CALLBACK_TIMEOUT_S",
        gt=0,
        allow_inf_nan=False,
    )
    backoff_s: float = _setting(
        1.0,
        "First retry delay of a failed callback; doubles per attempt (jittered).",
        env="RELAY_CALLBACK_BACKOFF_S",
        gt=0,
        allow_inf_nan=False,
    )
    backoff_max_s: float = _setting(
        300.0,
        "Cap of the callback retry delay.",
        env="RELAY_CALLBACK_BACKOFF_MAX_S",
        gt=0,
        allow_inf_nan=False,
    )
    max_attempts: int = _setting(
        20,
        "Attempts before a callback is dropped (counted, shown in the run detail).",
        env="RELAY_CALLBACK_MAX_ATTEMPTS",
        gt=0,
    )
    concurrency: int = _setting(
        16, "Runs whose callbacks are sent at the same time.", env="RELAY_CALLBACK_CONCURRENCY", gt=0
    )
    deliver: bool = _setting(
        True,
        "0 pauses sending (a receiver's maintenance window): callbacks are still queued and kept across restarts.",
        env="RELAY_CALLBACK_DELIVER",
    )


class CommanderConfig(BaseModel):
    """Everything ``relayctl serve`` needs: where to listen, where the state lives, the lease TTL, auth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = _setting("127.0.0.1", "Address to listen on.", flag="--host")
    port: int = _setting(
        8080, "Port to listen on; 0 picks a free one (the first line printed says which).", flag="--port"
    )
    state: str = _setting(
        "./commander_state.db",
        "SQLite state file (its directory must exist); survives restarts, kill -9 included.",
        env="RELAY_STATE",
        flag="--state",
    )
    shared_secret: SecretStr | None = _setting(
        None,
        "Require this secret on every endpoint but health (a bearer token). Never logged.",
        env="RELAY_SHARED_SECRET",
        flag="--shared-secret",
    )
    lease_ttl_s: float = _setting(
        60.0,
        f"Seconds a lease lives without a renew, at least {MIN_TTL_S:g}; holders renew every third of it.",
        env="RELAY_LEASE_TTL",
        flag="--lease-ttl",
    )
    header_timeout_s: float = _setting(
        10.0,
        "A connection must send a whole request head this soon after connecting (each gets 3/4 to all of "
        "it, so a flood is not closed at once) or after its last answer, else it is closed.",
        env="RELAY_HEADER_TIMEOUT_S",
        flag="--header-timeout",
        gt=0,
        allow_inf_nan=False,
    )
    body_timeout_s: float = _setting(
        30.0,
        "A request body must arrive this soon after its head, else the answer is 408.",
        env="RELAY_BODY_TIMEOUT_S",
        flag="--body-timeout",
        gt=0,
        allow_inf_nan=False,
    )
    max_connections: int = _setting(
        4096,
        "Open connections at most (and fewer when the open-file limit is low: room is kept for the state "
        "file and one accept batch); at the cap a new connection replaces the oldest that has not sent a "
        "request yet, or is answered 503.",
        env="RELAY_MAX_CONNECTIONS",
        flag="--max-connections",
        gt=0,
    )
    insecure: bool = _setting(
        False, "Allow listening on a non-loopback address without a shared secret.", flag="--insecure"
    )
    log_level: str = _setting("INFO", "Commander log level.", flag="--log-level")
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings, description="Callback delivery.")

    @field_validator("port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError(f"must be 0-65535 (got {value})")
        return value

    @field_validator("shared_secret")
    @classmethod
    def _empty_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("lease_ttl_s")
    @classmethod
    def _check_ttl(cls, value: float) -> float:
        if not value >= MIN_TTL_S or math.isinf(value):  # NaN fails the comparison too
            raise ValueError(
                f"must be a positive number of seconds, at least {MIN_TTL_S:g} (got {value!r}): "
                "workers renew every third of it, and a shorter lease expires on ordinary scheduling delays"
            )
        return value

    @model_validator(mode="after")
    def _secret_off_loopback(self) -> CommanderConfig:
        if not is_loopback(self.host) and self.shared_secret is None and not self.insecure:
            raise ValueError(
                f"refusing to listen on non-loopback address {self.host!r} without a shared secret; "
                "set RELAY_SHARED_SECRET / --shared-secret, or pass --insecure"
            )
        return self

    def secret(self) -> str | None:
        """The shared secret in clear, for the auth check only."""
        return self.shared_secret.get_secret_value() if self.shared_secret is not None else None


class CommanderConfigError(ValueError):
    """A setting ``relayctl serve`` refuses; ``str()`` is one line naming the flag or variable."""


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1; everything else (0.0.0.0, names, LAN) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings() -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, field) of every setting, nested callback ones included, in model order."""
    for name, field in CommanderConfig.model_fields.items():
        if name == "callbacks":
            for sub, subfield in CallbackSettings.model_fields.items():
                yield ("callbacks", sub), subfield
        else:
            yield (name,), field


def _where(field: Any) -> dict[str, str]:
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def load_commander_config(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> CommanderConfig:
    """The config from ``flags`` (top-level setting name -> value; None or False when not given), then
    ``env`` (an empty variable counts as unset), then the defaults; raises CommanderConfigError."""
    flags = flags or {}
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    sources: dict[tuple[str, ...], tuple[str, Any]] = {}
    for path, field in settings():
        where = _where(field)
        value = flags.get(path[0]) if len(path) == 1 else None
        if value is not None and value is not False:
            source = where.get("flag", path[-1])
        elif where.get("env") and (env.get(where["env"]) or "").strip():
            source, value = where["env"], env[where["env"]].strip()
        else:
            continue
        sources[path] = (source, value)
        target = data.setdefault("callbacks", {}) if path[0] == "callbacks" else data
        target[path[-1]] = value
    try:
        return CommanderConfig.model_validate(data)
    except ValidationError as exc:
        raise _one_line(exc, sources) from None


_KIND = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "int_type": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false (1/0, yes/no, on/off)",
    "finite_number": "a finite number",
}


def _one_line(
    exc: ValidationError, sources: Mapping[tuple[str, ...], tuple[str, Any]]
) -> CommanderConfigError:
    error = exc.errors(include_url=False)[0]
    path = tuple(str(p) for p in error["loc"])
    source, raw = sources.get(path, ("/".join(path), error.get("input")))
    shown = "***" if path == ("shared_secret",) else repr(raw)
    message = str(error["msg"]).removeprefix("Value error, ")
    if not path:  # a rule across settings: its message names them
        return CommanderConfigError(message)
    if error["type"] in _KIND:
        unit = " of seconds" if path[-1].endswith("_s") and "number" in _KIND[error["type"]] else ""
        return CommanderConfigError(f"{source} must be {_KIND[error['type']]}{unit} (got {shown})")
    if error["type"] == "value_error":
        return CommanderConfigError(f"{source} {message}")
    return CommanderConfigError(f"{source}: {message[:1].lower()}{message[1:]} (got {shown})")


def reference_rows() -> list[dict[str, str]]:
    """One row per setting: flag, variable, default, description (the README table's data)."""
    rows = []
    for path, field in settings():
        where = _where(field)
        default = field.default
        if isinstance(default, bool):
            shown = "1" if default else "0"
            if where.get("flag") and not where.get("env"):
                shown = "off" if not default else "on"
        else:
            shown = "" if default is None else f"{default:g}" if isinstance(default, float) else str(default)
        rows.append(
            {
                "flag": where.get("flag", ""),
                "env": where.get("env", ""),
                "key": ".".join(path),
                "default": shown,
                "description": field.description or "",
            }
        )
    return rows
