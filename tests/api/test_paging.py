"""GET /v1/endpoints answers a page at a time: a keyset cursor, a bounded page, nothing lost or repeated."""

from __future__ import annotations

from typing import Any

from dedicate.control.services import DEFAULT_PAGE, MAX_PAGE
from tests.api.conftest import App

TINY = {"model": "dedicate/tiny-chat", "hardware": "1x_cpu", "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "state": "STOPPED"}


def make(app: App, n: int, key: str | None = None, *, tick: float = 1.0) -> list[str]:
    ids = []
    for _ in range(n):
        resp = app.client.post("/v1/endpoints", json=TINY, headers=app.as_(key))
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["id"])
        app.clock.advance(tick)
    return ids


def pages(app: App, **params: Any) -> list[dict[str, Any]]:
    out, after = [], None
    while True:
        resp = app.client.get("/v1/endpoints", params={**params, **({"after": after} if after else {})})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out.append(page)
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return out
        after = page["next_cursor"]
        assert after == page["data"][-1]["id"], "the cursor is the last id of the page"


def test_pages_follow_the_cursor_oldest_first_without_loss_or_repeat(app: App) -> None:
    ids = make(app, 5)
    got = pages(app, limit=2)
    assert [len(p["data"]) for p in got] == [2, 2, 1]
    assert [e["id"] for p in got for e in p["data"]] == ids
    assert [p["has_more"] for p in got] == [True, True, False]


def test_endpoints_made_at_the_same_instant_page_by_id(app: App) -> None:
    ids = make(app, 5, tick=0)  # one created_at for all: the id breaks the tie
    got = [e["id"] for p in pages(app, limit=2) for e in p["data"]]
    assert got == sorted(ids) and len(set(got)) == 5


def test_without_a_limit_a_page_holds_the_default_and_says_more_follow(app: App) -> None:
    assert (DEFAULT_PAGE, MAX_PAGE) == (100, 1000)
    ids = make(app, DEFAULT_PAGE + 1, tick=0.001)
    first = app.client.get("/v1/endpoints").json()
    assert [e["id"] for e in first["data"]] == ids[:DEFAULT_PAGE]
    assert first["has_more"] is True and first["next_cursor"] == ids[DEFAULT_PAGE - 1]
    rest = app.client.get("/v1/endpoints", params={"after": first["next_cursor"]}).json()
    assert [e["id"] for e in rest["data"]] == ids[DEFAULT_PAGE:] and rest["has_more"] is False
    whole = app.client.get("/v1/endpoints", params={"limit": MAX_PAGE}).json()
    assert [e["id"] for e in whole["data"]] == ids and whole["has_more"] is False


def test_a_deleted_endpoint_still_marks_its_place(app: App) -> None:
    ids = make(app, 4)
    first = app.client.get("/v1/endpoints", params={"limit": 2}).json()
    assert app.client.delete(f"/v1/endpoints/{first['next_cursor']}").status_code == 204
    rest = app.client.get("/v1/endpoints", params={"limit": 2, "after": first["next_cursor"]}).json()
    assert [e["id"] for e in rest["data"]] == ids[2:]


def test_a_cursor_from_another_owner_is_refused_as_an_unknown_one(app: App) -> None:
    key = app.client.post("/v1/keys", json={"owner": "alice"}).json()["key"]
    (theirs,) = make(app, 1, key)
    (mine,) = make(app, 1)
    answers = [app.client.get("/v1/endpoints", params={"after": after}, headers=app.as_(who))
               for after, who in ((mine, key), ("endpoint-00000000-0000-4000-8000-000000000000", key))]
    for resp in answers:
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["param"] == "after" and "next_cursor" in error["message"]
    assert answers[0].json()["error"]["message"].replace(mine, "X") == \
        answers[1].json()["error"]["message"].replace("endpoint-00000000-0000-4000-8000-000000000000", "X")
    # An admin listing every owner may continue after anyone's endpoint.
    everyone = app.client.get("/v1/endpoints", params={"mine": "false", "after": theirs}).json()
    assert [e["id"] for e in everyone["data"]] == [mine]


def test_a_limit_outside_1_to_1000_is_a_400_naming_the_range(app: App) -> None:
    for limit in ("0", "1001", "ten", "-1", "2.5"):
        resp = app.client.get("/v1/endpoints", params={"limit": limit})
        assert resp.status_code == 400, limit
        error = resp.json()["error"]
        assert error == {"message": "limit must be a whole number from 1 to 1000", "type": "invalid_request_error",
                         "param": "limit", "code": "invalid_request"}
