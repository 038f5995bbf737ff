"""Whatever arrives as a management body, the answer is the envelope with a 4xx that says what is wrong."""

from __future__ import annotations

import pytest

from tests.api.conftest import App

PATHS = [("POST", "/v1/endpoints"), ("PUT", "/v1/owners/alice/quota"), ("PUT", "/v1/billing/budget"),
         ("POST", "/v1/keys")]


@pytest.mark.parametrize(("method", "path"), PATHS)
@pytest.mark.parametrize(("content", "content_type", "words"), [
    (b"\xff\xfe{", "application/json", "not valid JSON"),
    (b"\xff", None, "not valid JSON"),
    (b"[1, 2]", "text/plain", "must be a JSON object"),
    (b'"x"', "application/x-www-form-urlencoded", "must be a JSON object"),
    (b"{", None, "not valid JSON"),
    (b"{", "application/merge-patch+json", "not valid JSON"),
    (b"x" * ((1 << 20) + 1), None, "request body too large"),
])
def test_a_body_that_is_no_json_object_is_a_400_in_the_envelope(
        app: App, method: str, path: str, content: bytes, content_type: str | None, words: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    resp = app.client.request(method, path, content=content, headers=headers)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert words in error["message"], error
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
    assert resp.headers["x-should-retry"] == "false"


def test_a_key_may_be_made_with_no_body_at_all(app: App) -> None:
    for content in (b"", b"null"):
        resp = app.client.post("/v1/keys", content=content, headers={"content-type": "application/json"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["owner"] == "admin" and resp.json()["admin"] is False


def test_the_caller_is_checked_before_the_body(app: App) -> None:
    resp = app.client.post("/v1/endpoints", json=[1], headers={"authorization": "Bearer ddc_nope"})
    assert resp.status_code == 401, resp.text
    resp = app.client.patch("/v1/endpoints/endpoint-x", json={"owner": "x"}, headers={"authorization": ""})
    assert resp.status_code == 401, resp.text
