"""The console's pages in process: who may see what, what a page escapes, and how it signs in and out."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from dedicate.web.session import COOKIE, csrf_token
from tests.api.conftest import App

PAGES = ("/", "/deploy", "/models", "/pricing", "/billing", "/keys", "/admin")
EVIL = '<script>alert("owned")</script>'


def browser(app: App, key: str | None) -> TestClient:
    """A client with no Authorization header: what a browser sends, with the session cookie if signed in."""
    c = TestClient(app.client.app)
    if key is not None:
        c.cookies.set(COOKIE, key)
    return c


def owner_key(app: App, owner: str) -> str:
    _, secret = app.parts.store.create_key(owner, is_admin=False, name="web", now=app.clock.now())
    return secret


def create(app: App, key: str, **extra: object) -> dict[str, object]:
    body = {"model": "dedicate/tiny-chat", "hardware": "1x_cpu", "state": "STOPPED",
            "autoscaling": {"min_replicas": 1, "max_replicas": 1}, **extra}
    r = app.client.post("/v1/endpoints", json=body, headers=app.as_(key))
    assert r.status_code == 200, r.text
    made: dict[str, object] = r.json()
    return made


@pytest.mark.parametrize("path", [*PAGES, "/endpoints/ep_nothing"])
def test_without_a_session_every_page_sends_the_visitor_to_sign_in(app: App, path: str) -> None:
    r = browser(app, None).get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"


def test_a_bearer_header_alone_does_not_open_the_pages(app: App) -> None:
    r = app.client.get("/", follow_redirects=False)  # the admin key in Authorization, no cookie
    assert r.status_code == 303


def test_the_rows_fragment_answers_401_without_a_session(app: App) -> None:
    assert browser(app, None).get("/ui/endpoints/rows").status_code == 401


def test_signing_in_sets_an_http_only_strict_cookie_and_opens_every_page(app: App) -> None:
    c = browser(app, None)
    r = c.post("/signin", data={"key": app.admin_key}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    c.cookies.set(COOKIE, app.admin_key)
    for path in PAGES:
        page = c.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
        assert app.admin_key not in page.text, "the key never appears in a page"


def test_a_wrong_or_empty_key_is_told_so_and_sets_no_cookie(app: App) -> None:
    c = browser(app, None)
    wrong = c.post("/signin", data={"key": "ddc_wrong"})
    assert wrong.status_code == 401 and "not valid" in wrong.text and "set-cookie" not in wrong.headers
    empty = c.post("/signin", data={"key": "  "})
    assert empty.status_code == 400 and "Paste your API key" in empty.text


def test_a_sign_in_posted_from_another_site_is_refused(app: App) -> None:
    r = browser(app, None).post("/signin", data={"key": app.admin_key},
                                headers={"origin": "http://evil.example", "sec-fetch-site": "cross-site"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_signing_out_needs_the_page_token_and_clears_the_cookie(app: App) -> None:
    c = browser(app, app.admin_key)
    forged = c.post("/signout", data={"csrf": "nope"}, follow_redirects=False)
    assert forged.status_code == 403
    r = c.post("/signout", data={"csrf": csrf_token(app.admin_key)}, follow_redirects=False)
    assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]


def test_the_api_takes_the_session_only_with_the_page_token(app: App) -> None:
    key = owner_key(app, "ada")
    c = browser(app, key)
    body = {"model": "dedicate/tiny-chat", "hardware": "1x_cpu", "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    assert c.post("/v1/endpoints", json=body).status_code == 401
    assert c.post("/v1/endpoints", json=body, headers={"x-dedicate-csrf": csrf_token(app.admin_key)}).status_code == 401
    made = c.post("/v1/endpoints", json=body, headers={"x-dedicate-csrf": csrf_token(key)})
    assert made.status_code == 200 and made.json()["owner"] == "ada"


def test_names_a_user_gives_are_escaped_on_every_page_that_shows_them(app: App) -> None:
    key = owner_key(app, "ada")
    made = create(app, key, display_name=EVIL)
    c = browser(app, key)
    for path in ("/", "/billing", f"/endpoints/{made['id']}", "/ui/endpoints/rows"):
        text = c.get(path).text
        assert EVIL not in text and "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in text, path


def test_another_owner_sees_none_of_it(app: App) -> None:
    ada, bob = owner_key(app, "ada"), owner_key(app, "bob")
    made = create(app, ada, display_name="ada's")
    route = app.client.get("/v2/projects/proj_ada/endpoints", headers=app.as_(ada)).json()["data"][0]["id"]
    c = browser(app, bob)
    assert "ada&#39;s" not in c.get("/").text and "ada&#39;s" not in c.get("/billing").text
    assert c.get(f"/endpoints/{route}").status_code == 404
    assert c.get(f"/endpoints/{made['id']}").status_code == 404
    assert c.get(f"/ui/endpoints/rows?only={route}").text.count("data-endpoint") == 0
    admin_page = c.get("/admin")
    assert admin_page.status_code == 403 and "for admins" in admin_page.text


def test_an_endpoint_page_is_found_by_its_v2_id_or_its_deployment_v1_id(app: App) -> None:
    key = owner_key(app, "ada")
    made = create(app, key, display_name="twice")
    route = app.client.get("/v2/projects/proj_ada/endpoints", headers=app.as_(key)).json()["data"][0]["id"]
    c = browser(app, key)
    by_route, by_v1 = c.get(f"/endpoints/{route}"), c.get(f"/endpoints/{made['id']}")
    assert by_route.status_code == by_v1.status_code == 200
    assert f"endpoint <code>{route}</code>" in by_v1.text and "twice" in by_v1.text


def test_the_home_rows_show_state_hardware_bounds_and_the_menu(app: App) -> None:
    key = owner_key(app, "ada")
    made = create(app, key, display_name="shown", inactive_timeout=15)
    text = browser(app, key).get("/ui/endpoints/rows").text
    assert f'data-endpoint="{made["id"]}"' in text and "STOPPED" in text and "1x_cpu" in text
    assert "1..1" in text and "after 15 min idle" in text
    assert 'data-action="start"' in text and 'data-action="stop"' not in text, "a stopped endpoint can start"
    assert 'data-action="delete"' in text and 'data-action="edit"' in text


def test_the_console_script_and_styles_are_served_and_nothing_else(app: App) -> None:
    c = browser(app, None)
    js = c.get("/static/console.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert c.get("/static/console.css").status_code == 200
    assert c.get("/static/../settings.py").status_code == 404
    assert c.get("/static/nothing.js").status_code == 404
