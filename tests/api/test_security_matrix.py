"""Every route and method of the document, against keys that must not get through: another owner's key
on your objects (404, nothing changed), and a key of scope ``inference`` on the management API (403).

The matrix is built from ``/openapi.json``: a route added without a row here fails the test that
checks the matrix covers the document.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from dedicate.api.deps import INFERENCE_ONLY
from tests.api.conftest import App
from tests.api.test_openapi import operations
from tests.api.test_v2_endpoints import deployment_body

TINY = "dedicate/tiny-chat"
SERVER = {("get", "/healthz"), ("get", "/v1/models")}  # open to everyone: no object, no secret
INFERENCE = {("post", "/v1/chat/completions"), ("post", "/v1/completions")}
IDENTITY = {("get", "/v3/whoami")}  # any valid key learns who it is

# The body each changing route gets: a valid one, so what answers is the owner check, not the body's.
BODIES: dict[tuple[str, str], Any] = {
    ("patch", "/v1/endpoints/{endpoint_id}"): {"display_name": "taken over"},
    ("post", "/v1/endpoints/{endpoint_id}/scale"): {"replicas": 1},
    ("put", "/v1/owners/{owner}/quota"): {"gpus": 0},
    ("patch", "/v2/projects/{project_id}/endpoints/{endpoint_id}"): {"visibility": "VISIBILITY_INTERNAL"},
    ("patch", "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{deployment_id}"):
        {"autoscaling": {"minReplicas": 0, "maxReplicas": 0}},
    ("post", "/v2/projects/{project_id}/endpoints"): {"name": "squatter"},
    ("post", "/v2/projects/{project_id}/models"): {"name": "stolen", "baseModelId": TINY, "path": "/nowhere"},
}
# Routes whose path names no object of an owner: every caller sees only their own, or the catalog.
NOT_AN_OWNERS_OBJECT = {
    ("get", "/v1/billing/invoices/{month}"), ("get", "/v2/supported-models/{model_id}"),
    ("get", "/v2/public/inference-instance-types/{type_id}"), ("get", "/v2/organizations/{organization_id}/endpoints"),
}
OBJECT_PARAMS = ("endpoint_id", "deployment_id", "key_id", "owner", "model_id", "config_id")
ADMIN_ONLY = {("put", "/v1/owners/{owner}/quota")}  # refused by role (403) before any object is looked at


@pytest.fixture
def doc(app: App) -> dict[str, Any]:
    got: dict[str, Any] = app.client.get("/openapi.json").json()
    return got


def key_of(app: App, owner: str, scope: str = "manage") -> str:
    r = app.client.post("/v1/keys", json={"owner": owner, "scope": scope})
    assert r.status_code == 200, r.text
    secret: str = r.json()["key"]
    return secret


def alices_objects(app: App) -> dict[str, str]:
    """Alice's endpoint (v1 and v2 ids), deployment, key and fine-tune name: what bob aims at."""
    alice = key_of(app, "alice")
    v1 = app.client.post("/v1/endpoints", headers=app.as_(alice), json={
        "model": TINY, "hardware": "1x_cpu", "state": "STOPPED", "display_name": "alice's",
        "autoscaling": {"min_replicas": 1, "max_replicas": 2}}).json()
    uid = v1["id"].removeprefix("endpoint-")
    split = app.client.post(f"/v2/projects/proj_alice/endpoints/ep_{uid}/deployments", headers=app.as_(alice),
                            json=deployment_body_for(app))
    assert split.status_code == 200, split.text
    keys = app.client.get("/v1/keys", headers=app.as_(alice)).json()["data"]
    return {"alice": alice, "v1": v1["id"], "route": f"ep_{uid}", "deployment": f"dep_{uid}",
            "key": keys[0]["id"]}


def deployment_body_for(app: App) -> dict[str, Any]:
    return deployment_body(app, "green", lo=0, hi=1)


def path_for(path: str, objects: dict[str, str], project: str) -> str:
    v2 = path.startswith("/v2/")
    return (path.replace("{endpoint_id}", objects["route"] if v2 else objects["v1"])
                .replace("{deployment_id}", objects["deployment"]).replace("{key_id}", objects["key"])
                .replace("{owner}", "alice").replace("{project_id}", project)
                .replace("{model_id}", "alice-model").replace("{config_id}", "none")
                .replace("{upload}", "u1").replace("{path}", "weights.safetensors"))


def call(app: App, key: str, method: str, path: str, template: str) -> Any:
    headers = app.as_(key)
    if method == "put" and "/uploads/" in template:
        return app.client.request(method, path, headers={**headers, "content-type": "application/octet-stream"},
                                  content=b"\0" * 16)
    body = BODIES.get((method, template))
    return app.client.request(method, path, headers=headers, json=body) if body is not None else \
        app.client.request(method, path, headers=headers)


def alices_view(app: App, objects: dict[str, str]) -> str:
    a = app.as_(objects["alice"])
    seen = [app.client.get(f"/v1/endpoints/{objects['v1']}", headers=a).json(),
            app.client.get(f"/v2/projects/proj_alice/endpoints/{objects['route']}", headers=a).json(),
            app.client.get(f"/v2/projects/proj_alice/endpoints/{objects['route']}/deployments", headers=a).json(),
            app.client.get("/v1/keys", headers=a).json(), app.client.get("/v1/owners/alice", headers=a).json(),
            app.client.get("/v1/billing/budget", headers=a).json()]
    return json.dumps(seen, sort_keys=True)


def test_the_matrix_names_every_route_of_the_document(doc: dict[str, Any]) -> None:
    objecty = {(m, p) for m, p, _ in operations(doc) if "{" in p}
    assert objecty - NOT_AN_OWNERS_OBJECT, "there are routes on owners' objects"
    for method, path in objecty - NOT_AN_OWNERS_OBJECT:
        if method in ("post", "put", "patch") and not path.endswith(("/start", "/stop")) and "/uploads/" not in path:
            assert (method, path) in BODIES or path.endswith("/deployments"), f"{method} {path}: give it a body"


def test_another_owners_key_finds_none_of_your_objects_on_any_route_and_changes_nothing(
        app: App, doc: dict[str, Any]) -> None:
    objects = alices_objects(app)
    bob = key_of(app, "bob")
    app.client.post("/v2/projects/proj_bob/endpoints", headers=app.as_(bob), json={"name": "bobs"})
    before = alices_view(app, objects)
    tried = 0
    for method, template, _ in operations(doc):
        if "{" not in template or (method, template) in NOT_AN_OWNERS_OBJECT:
            continue
        names_more = any(f"{{{p}}}" in template for p in OBJECT_PARAMS)  # an upload's name is the caller's own
        projects = ("proj_alice", "proj_bob") if names_more else ("proj_alice",)
        for project in projects:  # in alice's project, and alice's ids in bob's own project
            path = path_for(template, objects, project)
            if template.endswith("/deployments") and method == "post":
                r = app.client.post(path, headers=app.as_(bob), json=deployment_body_for(app))
            else:
                r = call(app, bob, method, path, template)
            want = 403 if (method, template) in ADMIN_ONLY else 404
            assert r.status_code == want, f"{method.upper()} {path}: {r.status_code} {r.text[:200]}"
            assert "alice's" not in r.text and objects["alice"] not in r.text
            tried += 1
    assert tried >= 30
    assert alices_view(app, objects) == before, "nothing of alice's changed"
    # the console's pages and the gateway, too
    from tests.web.test_pages import browser

    page = browser(app, bob).get(f"/endpoints/{objects['route']}")
    assert page.status_code == 404 and "alice's" not in page.text
    v1 = app.client.get(f"/v1/endpoints/{objects['v1']}", headers=app.as_(objects["alice"])).json()
    chat = app.client.post("/v1/chat/completions", headers=app.as_(bob),
                           json={"model": v1["name"], "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 404, chat.text


def test_an_inference_key_calls_models_and_nothing_else(app: App, doc: dict[str, Any]) -> None:
    objects = alices_objects(app)
    inference = key_of(app, "alice", scope="inference")
    before = alices_view(app, objects)
    for method, template, _ in operations(doc):
        if (method, template) in SERVER | INFERENCE | IDENTITY:
            continue
        path = path_for(template, objects, "proj_alice")
        r = call(app, inference, method, path, template)
        assert r.status_code == 403, f"{method.upper()} {path}: {r.status_code} {r.text[:200]}"
        assert r.json()["error"]["message"] == INFERENCE_ONLY
    assert alices_view(app, objects) == before
    who = app.client.get("/v3/whoami", headers=app.as_(inference))
    assert who.status_code == 200 and who.json()["project"]["id"] == "proj_alice"
    assert app.client.get("/v1/models", headers=app.as_(inference)).status_code == 200
    v1 = app.client.get(f"/v1/endpoints/{objects['v1']}", headers=app.as_(objects["alice"])).json()
    chat = app.client.post("/v1/chat/completions", headers=app.as_(inference),
                           json={"model": v1["name"], "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code not in (401, 403), "the gateway takes it: the endpoint is stopped, not forbidden"
    from tests.web.test_pages import browser

    signin = browser(app, None).post("/signin", data={"key": inference})
    assert signin.status_code == 403 and "only call models" in signin.text and "set-cookie" not in signin.headers
    assert browser(app, inference).get("/", follow_redirects=False).status_code == 303, "no page for it"


def test_a_key_scope_is_chosen_at_creation_shown_and_checked(app: App) -> None:
    made = app.client.post("/v1/keys", json={"owner": "carol", "scope": "inference", "name": "app"})
    assert made.status_code == 200 and made.json()["scope"] == "inference"
    listed = app.client.get("/v1/keys", params={"all": "true"}).json()["data"]
    assert {k["owner"]: k["scope"] for k in listed}["carol"] == "inference"
    assert app.client.post("/v1/keys", json={}).json()["scope"] == "manage", "manage by default"
    wrong = app.client.post("/v1/keys", json={"scope": "root"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "scope"
    assert "inference" in wrong.json()["error"]["message"]
    admin_inference = app.client.post("/v1/keys", json={"admin": True, "scope": "inference"})
    assert admin_inference.status_code == 400 and "an admin key manages" in admin_inference.json()["error"]["message"]


def test_the_key_is_checked_before_the_body_is_read(app: App) -> None:
    """FastAPI decodes JSON before a route's dependencies: a caller without a key, or with an inference
    key, must learn that it may not call the route, not what is wrong with its body."""
    broken = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    for path, method in (("/v2/projects/proj_admin/endpoints", "POST"), ("/v1/endpoints", "POST"),
                         ("/v1/owners/alice/quota", "PUT")):
        bare = TestClient(app.client.app).request(method, path, **broken)  # type: ignore[arg-type]
        assert bare.status_code == 401, (path, bare.text)
        inference = key_of(app, "alice", scope="inference")
        scoped = app.client.request(method, path, content=b"{not json",
                                    headers={"content-type": "application/json", **app.as_(inference)})
        assert scoped.status_code == 403 and scoped.json()["error"]["message"] == INFERENCE_ONLY, scoped.text
        owner = key_of(app, "alice")
        as_owner = app.client.request(method, path, content=b"{not json",
                                      headers={"content-type": "application/json", **app.as_(owner)})
        assert as_owner.status_code == 400, as_owner.text  # a key that may call it: now the body counts


def test_an_owner_named_in_a_billing_query_must_be_an_owners_name(app: App) -> None:
    """Found by fuzzing: `?owner=` (empty) and `?owner=Bad Name` made owners no key can carry, whose
    projects then listed and answered 404."""
    for bad in ("Bad Name", " ", "x" * 64, "-lead"):
        for method, path, body in (("PUT", "/v1/billing/budget", {"monthly_cents": 5}),
                                   ("GET", "/v1/billing/budget", None), ("GET", "/v1/billing/usage", None),
                                   ("GET", "/v1/billing/invoices/2026-12", None)):
            r = app.client.request(method, path, params={"owner": bad}, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == "owner", (bad, path, r.text)
    assert app.client.get("/v1/billing/budget", params={"owner": ""}).json()["owner"] == "admin", "empty: your own"
    projects = {p["id"] for p in app.client.get("/v1/projects").json()["data"]}
    assert projects == {"proj_admin"}, projects
