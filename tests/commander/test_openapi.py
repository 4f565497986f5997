"""The OpenAPI document is generated from the route table and the models, and tells the truth."""

from __future__ import annotations

import jsonschema_rs  # comes with schemathesis (a test dependency)
import pytest

from relay import schema
from relay.commander.openapi import build_openapi
from relay.commander.routes import ENDPOINTS
from tests.commander.calls import acquire, report


@pytest.fixture(scope="module")
def doc():
    return build_openapi()


def _resolve(doc, ref: str) -> dict:
    assert ref.startswith("#/components/schemas/"), ref
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]


def validator_for(doc, name: str):
    return jsonschema_rs.Draft202012Validator(
        {"components": doc["components"], "$ref": f"#/components/schemas/{name}"}
    )


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


async def test_served_document_matches_the_generated_one(client, doc):
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == doc
    assert doc["openapi"].startswith("3.")


def test_every_route_is_documented_with_its_models(doc):
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(ep.path, ep.method) for ep in ENDPOINTS}
    for ep in ENDPOINTS:
        op = doc["paths"][ep.path][ep.method.lower()]
        if ep.request is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + ep.request.__name__)
            assert {"400", "413", "422"} <= set(op["responses"])
        for code, model in ep.responses.items():
            assert op["responses"][str(code)]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/" + model.__name__
            )
        assert ("401" in op["responses"]) == ep.auth
    for ref in _refs(doc):
        _resolve(doc, ref)  # every reference resolves


def test_documented_schemas_agree_with_the_wire(doc):
    """A real request and a real answer validate against the published JSON schemas."""

    def validate(instance, name):
        validator_for(doc, name).validate(instance)

    validate({"run_id": "r1", "worker_id": "w1", "mode": "sft"}, "AcquireRequest")
    with pytest.raises(jsonschema_rs.ValidationError):
        validate({"run_id": "r1", "worker_id": "w1", "bogus": 1}, "AcquireRequest")
    with pytest.raises(jsonschema_rs.ValidationError):
        validate({"run_id": "r1", "worker_id": "w1", "lease_id": "x", "epoch": "1"}, "RenewRequest")
    validate(schema.RenewResponse(ttl_s=60).model_dump(mode="json"), "RenewResponse")
    assert set(doc["components"]["schemas"]["RunStatus"]["enum"]) == {s.value for s in schema.RunStatus}


async def test_answers_validate_against_the_documented_response_schemas(client, doc):
    _, grant = await acquire(client)
    await report(client, grant, step=3, metrics={"loss": 1.0}, event="trainer_started")
    for path, method, name in (
        ("/api/health", "get", "HealthResponse"),
        ("/api/runs", "get", "RunList"),
        ("/api/runs/r1", "get", "RunDetail"),
    ):
        resp = await client.request(method, path)
        validator_for(doc, name).validate(await resp.json())
    resp = await client.post("/api/lease/acquire", json={"run_id": "r1", "worker_id": "w2"})
    validator_for(doc, "AcquireDenied").validate(await resp.json())
