"""A configuration the worker refuses, said in one line that names the key and where its value came from.

``relay.config`` raises these while it loads and validates; ``relayctl worker --check`` and the deploy
printers list ``ConfigError.problems`` one per line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from relay.redact import MASK, SECRET_KEYS


class ConfigError(Exception):
    """A configuration the worker refuses to start with; ``str()`` is one line naming the key.

    ``problems`` holds every problem found, one by one (``relayctl worker --check`` and the printers
    show one line each).
    """

    def __init__(self, key: str | None, message: str, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        #: every problem found, as (key, message, source): the first is ``key``/``message``'s own
        self.problems: list[tuple[str | None, str, str | None]] = [(key, message, source)]
        where = f" ({source})" if source else ""
        head = f"{key}{where}: " if key else (f"{source}: " if source else "")
        super().__init__(f"config error: {head}{message}".replace("\n", " "))


def problem(
    err: Any, sources: Mapping[str, str], fields: Collection[str]
) -> tuple[str | None, str, str | None]:
    """One pydantic validation error as (key, message, where the value came from); ``fields`` are the
    model's keys (a model validator's message may start with one)."""
    loc = [str(p) for p in err.get("loc", ())]
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    key = ".".join(loc) if loc else None
    if key is None and ": " in msg and msg.split(": ", 1)[0] in fields:
        key, msg = msg.split(": ", 1)
    if err.get("type") == "extra_forbidden":
        msg = "unknown key (typo? see configs/run.yaml for the keys)"
    elif err.get("type") == "missing":
        how = ": set commander_url in the config file or COMMANDER_URL" if key == "commander_url" else ""
        msg = f"required{how}"
    elif "input" in err and err.get("type") not in ("value_error",) and not isinstance(err["input"], dict):
        shown = MASK if loc and loc[0] in SECRET_KEYS else repr(err["input"])
        msg = f"{msg} (got {shown})"
    top = loc[0] if loc else (key or "")
    return key, msg, sources.get(top)


def one_line(problems: list[tuple[str | None, str, str | None]]) -> ConfigError:
    """Every problem on one line: the first names the error's key, the others follow as 'key (source): ...'."""
    key, msg, source = problems[0]
    for other_key, other_msg, other_source in problems[1:]:
        where = f" ({other_source})" if other_source else ""
        msg += f"; {other_key or 'config'}{where}: {other_msg}"
    error = ConfigError(key, msg, source)
    error.problems = problems
    return error
