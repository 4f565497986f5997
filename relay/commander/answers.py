"""How a refusal or a failure becomes an HTTP answer: the commander's only exception-to-response table.

Every handler's exception reaches :func:`error_answer` (through ``CommanderApi.wrap``): a validation
problem is a 400 (malformed JSON, a body that is not an object, a bad id) or a 422 (a missing, unknown or
mistyped field), always naming the field; a rule's refusal is its own status (``relay.commander.errors``);
a store failure is a 503 said in the log at most every so often; anything else a 500 without a traceback.
"""

from __future__ import annotations

import logging
import sqlite3

from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.commander.errors import LeaseHeldError, RuleError
from relay.commander.ratelog import RateLimitedLog
from relay.commander.routes import JSON, Endpoint
from relay.commander.store import StoreError
from relay.schema import AcquireDenied, ErrorResponse, RunStatus

log = logging.getLogger("relay.commander")


class ApiError(Exception):
    """A request error found in the HTTP layer (path parameter, query, body size)."""

    def __init__(self, http_status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.field = field


def json_answer(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model.__pydantic_serializer__.to_json(model), status=status, content_type=JSON)


def error(
    http_status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    run_status: RunStatus | None = None,
    detail: object = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = ErrorResponse(error=message, code=code, field=field, status=run_status, detail=detail)
    response = json_answer(body, http_status)
    if headers:
        response.headers.update(headers)
    return response


_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "field required",
}


def validation_error(exc: ValidationError) -> web.Response:
    """400 for a body that is not a JSON object or a bad id, 422 for other field errors; names the field."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if not errors:  # pragma: no cover - pydantic always lists at least one
        return error(400, "validation_error", "invalid request body", "body")
    first = next((e for e in errors if e["type"] == "invalid_id"), errors[0])
    loc = ".".join(str(p) for p in first["loc"])
    detail = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "type": e["type"], "message": e["msg"]}
        for e in errors
    ]
    if first["type"] == "json_invalid":
        return error(400, "malformed_json", f"body is not valid JSON: {first['msg']}", "body", detail=detail)
    if not loc:
        return error(400, "bad_body", f"body must be a JSON object: {first['msg']}", "body", detail=detail)
    message = _FRIENDLY.get(first["type"], first["msg"])
    if first["type"] == "invalid_id":
        return error(400, "invalid_id", f"{loc}: {message}", loc, detail=detail)
    return error(422, "validation_error", f"{loc}: {message}", loc, detail=detail)


def error_answer(
    endpoint: Endpoint, request: web.Request, exc: Exception, store_log: RateLimitedLog
) -> web.Response:
    """The answer to a handler that raised: the only place an exception becomes an HTTP answer."""
    if isinstance(exc, ValidationError):
        return validation_error(exc)
    if isinstance(exc, LeaseHeldError):
        denied = AcquireDenied(
            holder=exc.holder, retry_after_s=exc.retry_after_s, status=exc.status, detail=str(exc)
        )
        return json_answer(denied, 409)
    if isinstance(exc, RuleError):
        if endpoint.handler == "acquire" and exc.http_status == 409:
            return json_answer(AcquireDenied(status=exc.status, detail=str(exc)), 409)
        return error(exc.http_status, exc.code, str(exc), exc.field, run_status=exc.status, detail=exc.detail)
    if isinstance(exc, ApiError):
        answer = error(exc.http_status, exc.code, str(exc), exc.field)
        if exc.http_status == 408:
            answer.force_close()  # the rest of a slow body is not waited for
        return answer
    if isinstance(exc, (StoreError, sqlite3.Error)):  # a full disk fails every request: said once in a while
        store_log.log(
            logging.ERROR, "store", "state store error on %s %s: %s", request.method, request.path, exc
        )
        return error(503, "store_error", f"commander state store error: {exc}")
    log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
    return error(500, "internal_error", "internal commander error (see the commander's log)")
