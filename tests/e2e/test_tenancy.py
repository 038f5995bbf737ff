"""An owner sees and touches only its own endpoints, on the management API and the gateway."""

from __future__ import annotations

from tests.e2e.harness import Server


def _key(server: Server, owner: str) -> str:
    with server.client() as admin:
        resp = admin.post("/v1/keys", json={"owner": owner, "name": f"{owner}-key"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


def test_another_owners_endpoint_is_invisible_everywhere(server: Server) -> None:
    bob, carol = _key(server, "bob"), _key(server, "carol")
    ep = server.create_tiny(key=bob, state="STOPPED")
    assert ep["owner"] == "bob" and ep["name"].startswith("bob/tiny-chat-")
    path = f"/v1/endpoints/{ep['id']}"
    with server.client(carol) as c:
        assert c.get(path).status_code == 404
        assert c.patch(path, json={"state": "STARTED"}).status_code == 404
        assert c.delete(path).status_code == 404
        assert c.get(path + "/events").status_code == 404
        assert [e["id"] for e in c.get("/v1/endpoints").json()["data"]] == []
        assert c.get("/v1/models").json()["data"] == []
        chat = c.post("/v1/chat/completions", json={"model": ep["name"], "messages": []})
        assert chat.status_code == 404 and "not found" in chat.json()["error"]["message"]
    with server.client(bob) as b:
        assert b.get(path).json()["state"] == "STOPPED", "carol's attempts changed nothing"
        assert [e["id"] for e in b.get("/v1/endpoints").json()["data"]] == [ep["id"]]


def test_admin_sees_other_owners_only_when_listing_with_mine_false(server: Server) -> None:
    dave = _key(server, "dave")
    ep = server.create_tiny(key=dave, state="STOPPED")
    with server.client() as admin:
        mine = [e["id"] for e in admin.get("/v1/endpoints", params={"mine": "true"}).json()["data"]]
        everyone = [e["id"] for e in admin.get("/v1/endpoints", params={"mine": "false"}).json()["data"]]
    assert ep["id"] not in mine and ep["id"] in everyone


def test_whoami_names_the_keys_owner_as_project_and_the_installation_as_organization(server: Server) -> None:
    erin = _key(server, "erin")
    with server.client(erin) as c:
        who = c.get("/v3/whoami").json()
    assert who["type"] == "project_api_key"
    # an owner is a project (proj_<owner>, slug = the owner); the installation is the organization
    assert who["project"] == {"id": "proj_erin", "name": "erin", "slug": "erin"}
    assert who["organization"] == {"id": "org_dedicate", "name": "dedicate"}
    assert who["api_key"]["id"].startswith("key_")


def test_owners_cannot_make_keys_for_others_or_admin_keys(server: Server) -> None:
    frank = _key(server, "frank")
    with server.client(frank) as c:
        assert c.post("/v1/keys", json={"owner": "grace"}).status_code == 403
        assert c.post("/v1/keys", json={"admin": True}).status_code == 403
        own = c.post("/v1/keys", json={"name": "second"})
        assert own.status_code == 200 and own.json()["owner"] == "frank"
        listed = c.get("/v1/keys").json()["data"]
        assert {k["owner"] for k in listed} == {"frank"} and len(listed) == 2
        assert all("key" not in k for k in listed), "secrets are shown once, never listed"
        assert c.get("/metrics").status_code == 403
