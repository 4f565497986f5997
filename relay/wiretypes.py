"""The field types of the wire contract: strict numbers, ids, URLs, header text, finite JSON.

``relay.schema`` builds its request and response models from these; each type carries its rule
and the JSON schema that documents the same rule, so the OpenAPI document never promises what the
validator refuses.  Light to import: pydantic, ``relay.ids`` and ``relay.urls`` only.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

from relay.ids import ID_PATTERN, INT64_MAX, id_problem
from relay.urls import REMOTE_PATTERN, RemoteURLError, parse_remote_url


def _integral(value: object) -> object:
    """JSON Schema counts ``3.0`` as an integer, so the commander does too (never ``3.5``, ``"3"`` or ``true``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: SQLite stores 64-bit signed integers (``relay.ids.INT64_MAX``): anything larger would be a 500, so it
#: is a 422 naming the field.
Int = Annotated[int, Strict(), Field(ge=-INT64_MAX, le=INT64_MAX), BeforeValidator(_integral)]
#: A request float must be finite: JSON has no NaN/Infinity, yet the JSON parser accepts those literals and
#: reads ``1e400`` as infinity.  Metric values are the one exception (see ``relay.schema.ReportRequest``).
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
#: A metric value: NaN (a diverged loss) and infinities are accepted and stored / answered as null.
MetricFloat = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
NonNegInt = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX), BeforeValidator(_integral)]
Mode = Literal["sft", "rl"]
#: The longest a long-polled acquire is held (``AcquireRequest.wait_s``), and that field's type.
MAX_ACQUIRE_WAIT_S = 600.0
WaitSeconds = Annotated[float, Strict(), Field(ge=0, le=MAX_ACQUIRE_WAIT_S, allow_inf_nan=False)]

MAX_TEXT = 8192  # a message, a detail, a path: long enough for a traceback line, short enough for a DB row


def _check_id(value: str) -> str:
    reason = id_problem(value)
    if reason is not None:
        raise PydanticCustomError("invalid_id", "invalid id: {reason}", {"reason": reason})
    return value


#: A run or worker id, validated by the rule in ``relay.ids``; the documented schema carries the same
#: rule as a pattern, so a schema-valid id is never refused (and an invalid one is never documented).
Id = Annotated[
    str,
    AfterValidator(_check_id),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 128}),
]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


def _matching(pattern: str, code: str, message: str, max_length: int) -> Any:
    """A string type with a rule and a clear message, documented as the same regex (so the two agree)."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise PydanticCustomError(code, message)
        return value

    documented = {"type": "string", "pattern": pattern, "maxLength": max_length}
    return Annotated[str, Field(max_length=max_length), AfterValidator(check), WithJsonSchema(documented)]


#: http(s), a host name, IPv4 or [IPv6] address, an optional port, then printable ASCII (no spaces).
WEBHOOK_URL_PATTERN = r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?([/?#][!-~]*)?$"
#: One line of printable ASCII: it becomes an HTTP header, so no CR/LF can smuggle in another one.
HEADER_PATTERN = r"^[ -~]+$"

WebhookUrl = _matching(
    WEBHOOK_URL_PATTERN, "invalid_url", "must be an http:// or https:// URL with a host", 2048
)
HeaderText = _matching(HEADER_PATTERN, "invalid_header", "must be one line of printable ASCII", 4096)


def _check_remote(value: str) -> str:
    try:
        parse_remote_url(value)
    except RemoteURLError as exc:
        raise PydanticCustomError("invalid_remote", "{reason}", {"reason": str(exc)}) from None
    return value


#: A remote a worker can open, by the one rule of ``relay.urls`` (the worker's config uses it too).
RemoteUrl = Annotated[
    str,
    Field(max_length=2048),
    AfterValidator(_check_remote),
    WithJsonSchema({"type": "string", "pattern": REMOTE_PATTERN, "maxLength": 2048}),
]


def _non_finite_path(value: Any, path: str, depth: int = 0) -> str | None:
    """The dotted path of the first NaN/Infinity inside ``value``, or None when every number is finite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if depth > 100:  # deeper than any real config; the body limit bounds the work anyway
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}", depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
    return None


def finite_json(value: dict[str, Any]) -> dict[str, Any]:
    """The train block goes to the trainer as JSON: NaN/Infinity (or 1e400) would make it invalid JSON."""
    where = _non_finite_path(value, "train")
    if where is not None:
        raise PydanticCustomError(
            "finite_number",
            "non-finite number at {where} (NaN and Infinity are not JSON)",
            {"where": where},
        )
    return value
