"""Run and worker ids: one rule, shared by the commander, the worker and every path built from an id.

An id becomes a directory name on the volume and a path prefix on the remote, so it
must never be able to climb out of its directory (``..``) or smuggle a separator.
"""

from __future__ import annotations

import re

_CHARSET_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

#: The whole rule (the charset, 1-128 characters, not "." or "..") as one regular expression without
#: look-around, so that JSON Schema / OpenAPI consumers (schemathesis, client generators) accept and
#: generate exactly the ids the commander accepts.
ID_PATTERN = (
    r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$"
)


class InvalidIdError(ValueError):
    """An id that could not safely name a run or a worker."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {value!r})")


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid id, or None when it is."""
    if not isinstance(value, str):
        return "must be a string"
    if not _CHARSET_RE.fullmatch(value):
        return "must be 1-128 characters of A-Z a-z 0-9 . _ -"
    if value in (".", ".."):
        return "must not be '.' or '..'"
    return None


def validate_id(value: object, field: str = "run_id") -> str:
    """Return ``value`` when it is a safe id, else raise InvalidIdError naming ``field``."""
    reason = id_problem(value)
    if reason is not None:
        raise InvalidIdError(field, value, reason)
    assert isinstance(value, str)
    return value
