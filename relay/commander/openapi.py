"""The commander's OpenAPI 3.1 document, generated from the route table and the wire models.

Every path, parameter and schema comes from :data:`relay.commander.routes.ENDPOINTS` and
``relay.schema``, so the published document says what the code does: the tests validate real
answers against it and fuzz the server from it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from relay import __version__
from relay.commander.routes import ENDPOINTS, JSON, Endpoint, QueryParam
from relay.ids import ID_PATTERN
from relay.schema import CallbackPayload, ErrorResponse

Json = dict[str, object]


def _ref(model: type[BaseModel]) -> Json:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(model: type[BaseModel]) -> Json:
    return {JSON: {"schema": _ref(model)}}


def _error(description: str) -> Json:
    return {"description": description, "content": _content(ErrorResponse)}


def _responses(ep: Endpoint) -> Json:
    """Every answer ``ep`` can give: its models, plus the errors the HTTP layer adds."""
    responses: Json = {
        str(code): {
            "description": model.__doc__.strip().splitlines()[0] if model.__doc__ else model.__name__,
            "content": _content(model),
        }
        for code, model in ep.responses.items()
    }
    if ep.handler == "openapi":
        responses["200"] = {
            "description": "OpenAPI document",
            "content": {JSON: {"schema": {"type": "object"}}},
        }
    if ep.media is not None:
        responses["200"] = {"description": ep.summary, "content": {ep.media: {"schema": {"type": "string"}}}}
    if ep.request is not None or "{run_id}" in ep.path or ep.query:
        responses.setdefault("400", _error("bad id, malformed JSON or query"))
    if ep.request is not None:
        responses["413"] = _error("body over 1 MiB")
        responses["422"] = _error("a field is missing, unknown or mistyped")
    if ep.auth:
        responses["401"] = _error("missing or wrong shared secret")
    return responses


def _query_parameter(param: QueryParam) -> Json:
    return {
        "name": param.name,
        "in": "query",
        "required": False,
        "description": param.description,
        "schema": {"type": "integer", "minimum": param.low, "maximum": param.high, "default": param.default},
    }


def _operation(ep: Endpoint) -> Json:
    operation: Json = {"operationId": ep.handler, "summary": ep.summary, "responses": _responses(ep)}
    parameters: list[Json] = []
    if "{run_id}" in ep.path:
        parameters.append(
            {
                "name": "run_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": ID_PATTERN},
            }
        )
    parameters += [_query_parameter(param) for param in ep.query]
    if parameters:
        operation["parameters"] = parameters
    if ep.request is not None:
        operation["requestBody"] = {"required": True, "content": _content(ep.request)}
    operation["security"] = [{"bearer": []}, {"relaySecret": []}] if ep.auth else []
    return operation


def _schemas(endpoints: Sequence[Endpoint]) -> Json:
    """The JSON schemas of every model the endpoints (and the callbacks) use."""
    models: list[type[BaseModel]] = [ErrorResponse, CallbackPayload]
    for ep in endpoints:
        if ep.request is not None:
            models.append(ep.request)
        models.extend(ep.responses.values())
    unique = list(dict.fromkeys(models))
    _, defs = models_json_schema(
        [(m, "validation") for m in unique], ref_template="#/components/schemas/{model}"
    )
    return defs.get("$defs", {})  # type: ignore[return-value]


def build_openapi(endpoints: Sequence[Endpoint] = ENDPOINTS) -> Json:
    """The OpenAPI 3.1 document, generated from ``endpoints`` and the pydantic models."""
    paths: dict[str, Json] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {"title": "relay-trainer commander", "version": __version__},
        "paths": paths,
        "webhooks": {
            "runCallback": {
                "post": {
                    "summary": "What the commander POSTs to a run's callbacks.webhook_url (any 2xx acknowledges).",
                    "requestBody": {"required": True, "content": _content(CallbackPayload)},
                    "responses": {"200": {"description": "delivered"}},
                }
            }
        },
        "components": {
            "schemas": _schemas(endpoints),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "relaySecret": {"type": "apiKey", "in": "header", "name": "X-Relay-Secret"},
            },
        },
    }
