"""Run and worker ids: one rule, shared by the commander, the worker and every path built from an id.

An id becomes a directory name on the volume and a path prefix on the remote, so it
must never be able to climb out of its directory (``..``) or smuggle a separator.
The same goes for a training step a trainer hands us (a progress line, a checkpoint's name or
COMPLETE marker): :func:`parse_step` is the one rule for it.
"""

from __future__ import annotations

import math
import re

#: The largest step, epoch or count any part of relay accepts: the commander stores them as SQLite's
#: 64-bit signed integers, so a bigger one from a trainer (a progress line, a checkpoint name) is
#: refused where it enters rather than becoming a 500 (or an OverflowError) further on.
INT64_MAX = 2**63 - 1


def parse_step(value: object) -> int | None:
    """``value`` as a training step: an integer (or an integral float) in 0..INT64_MAX, else None.

    NaN, infinities, 1e30, negative and fractional numbers, bools and strings are all None: a step
    becomes a checkpoint name, a report to the commander and a SQLite integer, so nonsense stops here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        return None
    return value


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
