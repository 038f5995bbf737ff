"""/openapi.json describes every route: its parameters, its body, its answer and its errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from openapi_spec_validator import validate

from tests.api.conftest import App

METHODS = ("get", "post", "put", "patch", "delete")
# Routes without a key: no 401 to document.
OPEN = {("get", "/healthz")}
# Bodies a route takes, and whether it must be given.
BINARY = "application/octet-stream"  # a body of raw bytes, streamed (an upload)
BODIES = {
    ("post", "/v1/endpoints"): ("CreateEndpoint", True),
    ("patch", "/v1/endpoints/{endpoint_id}"): ("EndpointPatch", True),
    ("post", "/v1/endpoints/{endpoint_id}/scale"): ("Scale", True),
    ("put", "/v1/owners/{owner}/quota"): ("QuotaUpdate", True),
    ("put", "/v1/billing/budget"): ("BudgetUpdate", True),
    ("post", "/v1/keys"): ("NewKey", False),
    ("post", "/v1/chat/completions"): ("InferenceRequest", True),
    ("post", "/v1/completions"): ("InferenceRequest", True),
    ("post", "/v2/projects/{project_id}/endpoints"): ("EndpointIn", True),
    ("post", "/v2/projects/{project_id}/models"): ("ModelIn", True),
    ("put", "/v2/projects/{project_id}/uploads/{upload}/files/{path}"): (BINARY, True),
    ("patch", "/v2/projects/{project_id}/endpoints/{endpoint_id}"): ("EndpointPatchIn", True),
    ("post", "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments"): ("DeploymentIn", True),
    ("patch", "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{deployment_id}"):
        ("DeploymentPatchIn", True),
}
ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


@pytest.fixture
def doc(app: App) -> dict[str, Any]:
    resp = app.client.get("/openapi.json", headers={"authorization": ""})
    assert resp.status_code == 200, resp.text
    document: dict[str, Any] = resp.json()
    return document


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()
            if method in METHODS]


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    validate(doc)  # raises on any violation of the OpenAPI 3.1 specification
    assert doc["openapi"].startswith("3.1")


def test_every_route_of_the_app_is_in_the_document(app: App, doc: dict[str, Any]) -> None:
    documented = {(m, p) for m, p, _ in operations(doc)}
    routes = list(api_routes(app.client.app.app.app.routes))  # type: ignore[attr-defined]
    assert len(routes) > 25
    for route in routes:
        if route.include_in_schema:
            for method in route.methods - {"HEAD", "OPTIONS"}:
                documented_path = route.path.replace(":path}", "}")  # a path converter is documented plain
                assert (method.lower(), documented_path) in documented, f"{method} {route.path} is not documented"
    # The gateway's inference paths are served outside FastAPI, and documented all the same.
    assert {("post", "/v1/chat/completions"), ("post", "/v1/completions")} <= documented


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """The app's routes, those of included routers too (FastAPI includes them lazily, whole)."""
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        elif getattr(r, "original_router", None) is not None:  # no router here is included with a prefix
            yield from api_routes(r.original_router.routes)


def test_every_success_answer_has_a_schema_that_says_something(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert len(ok) == 1, f"{method} {path}: {ok}"
        answer = op["responses"][ok[0]]
        if ok[0] == "204":
            assert "content" not in answer, f"{method} {path}: a 204 has no body"
            continue
        content = answer.get("content", {})
        assert content, f"{method} {path}: no answer schema"
        for media, body in content.items():
            schema = resolve(doc, body["schema"])
            if media == "application/json" and path not in ("/v1/chat/completions", "/v1/completions"):
                assert schema.get("type") == "object" and schema.get("properties"), \
                    f"{method} {path}: the answer schema is empty: {schema}"
            else:
                assert schema.get("type") in ("object", "string"), f"{method} {path}: {media} {schema}"


def test_every_route_documents_the_error_envelope(doc: dict[str, Any]) -> None:
    envelope = resolve(doc, ENVELOPE)
    assert set(resolve(doc, envelope["properties"]["error"])["properties"]) == {"message", "type", "param", "code"}
    for method, path, op in operations(doc):
        responses = op["responses"]
        assert "422" not in responses, f"{method} {path}: this API answers 400, never FastAPI's 422"
        errors = {s: r for s, r in responses.items() if s.startswith(("4", "5")) or s == "default"}
        if (method, path) in OPEN:
            continue
        assert "401" in errors and "default" in errors, f"{method} {path}: {sorted(responses)}"
        for status, answer in errors.items():
            assert answer["content"]["application/json"]["schema"] == ENVELOPE, f"{method} {path} {status}"
        if any(checked(p) for p in op.get("parameters", [])) or "requestBody" in op:
            assert "400" in errors, f"{method} {path}: takes input it checks, so documents the 400 for bad input"
        if "{endpoint_id}" in path:
            assert "404" in errors, f"{method} {path}"


def checked(parameter: dict[str, Any]) -> bool:
    """A query parameter that can be wrong: anything but free text (a boolean, a number, a choice, a time)."""
    schema = parameter["schema"]
    options = [o for o in schema.get("anyOf", [schema]) if o.get("type") != "null"]
    return parameter["in"] == "query" and any(o != {"type": "string"} for o in options)


def test_every_body_and_parameter_has_a_schema(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        expected = BODIES.get((method, path))
        body = op.get("requestBody")
        if expected is None:
            assert body is None, f"{method} {path} takes no body"
        else:
            name, required = expected
            assert body is not None, f"{method} {path}: its body is not documented"
            assert bool(body.get("required")) is required, f"{method} {path}"
            if name == BINARY:
                assert body["content"][BINARY]["schema"] == {"type": "string", "format": "binary"}, f"{method} {path}"
            else:
                schema = body["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith(f"/{name}"), f"{method} {path}: {schema}"
                assert resolve(doc, schema)["properties"], f"{method} {path}: an empty body schema"
        named = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert named == {part[1:-1] for part in path.split("/") if part.startswith("{")}, f"{method} {path}"
        for p in op.get("parameters", []):
            assert p["schema"], f"{method} {path}: parameter {p['name']} has no schema"


def test_together_clients_parameters_and_required_fields_are_documented(doc: dict[str, Any]) -> None:
    listing = doc["paths"]["/v1/endpoints"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"type", "mine", "usage_type", "limit", "after"}
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["default"], limit["minimum"], limit["maximum"]) == (100, 1, 1000)
    create = resolve(doc, {"$ref": "#/components/schemas/CreateEndpoint"})
    assert set(create["required"]) == {"model", "hardware", "autoscaling"}
    states = resolve(doc, {"$ref": "#/components/schemas/EndpointState"})["enum"]
    assert states == ["PENDING", "STARTING", "STARTED", "STOPPING", "STOPPED", "ERROR"]
    endpoint = resolve(doc, {"$ref": "#/components/schemas/DedicatedEndpoint"})
    assert {"billing", "dry_run"}.isdisjoint(endpoint["required"]), "left out where they have no value"
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
