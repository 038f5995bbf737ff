"""The web console in a real browser (Debian's Chromium through Playwright) against a real server
with real demo replicas: sign in, deploy and watch it reach READY, chat, stop and start from the
"⋯" menu, cancel a queued deployment with the red button, the cost line, tenancy, accessibility,
keyboard use, a phone's width, and a screenshot of every page at 1280 and 390 px.

The server has one CPU slot, so a second deployment waits in the queue.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import axe_playwright_python.sync_playwright as axe_api  # dev dependencies: missing, the suite fails
import httpx
import playwright.sync_api as playwright_api
import pytest

from tests.e2e.harness import FAST_CONFIG, Server

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("DEDICATE_SCREENSHOTS", ROOT / "build" / "console-screenshots"))
CONFIG = FAST_CONFIG.replace("slots = 4", "slots = 1")
MODEL = "dedicate/tiny-chat"
UP = 120_000  # ms: a demo replica loads its model
expect = playwright_api.expect


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("console"), config=CONFIG, shared_models=tiny_model)
    try:
        yield s.start()
    finally:
        s.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def new_key(server: Server, owner: str) -> str:
    with server.client() as c:
        made = c.post("/v1/keys", json={"owner": owner, "name": "console"})
    assert made.status_code == 200, made.text
    key: str = made.json()["key"]
    return key


def page_of(browser: Any, server: Server, key: str | None, width: int = 1280) -> Any:
    ctx = browser.new_context(base_url=server.url, viewport={"width": width, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    if key is not None:
        sign_in(page, key)
    return page


def sign_in(page: Any, key: str) -> None:
    page.goto("/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Endpoints")).to_be_visible()


def row(page: Any, endpoint_id: str) -> Any:
    return page.locator(f'tr[data-endpoint="{endpoint_id}"]')


def api(server: Server, key: str) -> httpx.Client:
    return server.client(key)


def stop_everything(server: Server, key: str) -> None:
    with api(server, key) as c:
        for ep in c.get("/v1/endpoints").json()["data"]:
            c.delete(f"/v1/endpoints/{ep['id']}")
        for ep in c.get("/v1/endpoints").json()["data"]:
            server.wait_state(ep["id"], {"STOPPED"}, key=key)


def test_a_signed_out_visitor_reaches_nothing_but_the_sign_in_page(browser: Any, server: Server) -> None:
    page = page_of(browser, server, None)
    for path in ("/", "/deploy", "/models", "/pricing", "/billing", "/keys", "/admin", "/endpoints/ep_x"):
        page.goto(path)
        assert page.url.endswith("/signin"), path
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill("ddc_not_a_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    assert "ddc_not_a_key" not in page.url and "ddc_not_a_key" not in page.content()
    assert not [c for c in page.context.cookies() if c["value"]], "a refused key leaves no cookie"
    page.context.close()


def test_deploy_watch_it_get_ready_chat_stop_start_and_see_the_cost(browser: Any, server: Server) -> None:
    key = new_key(server, "ada")
    page = page_of(browser, server, key)
    page.get_by_role("link", name="Deploy a model").click()
    page.get_by_label("Model").fill(MODEL)
    expect(page.get_by_role("radio", name=re.compile(r"1x_cpu: available"))).to_be_checked()
    price = page.locator("#price")
    expect(price).to_contain_text("per replica-minute")
    expect(price).to_contain_text("at 1 replica(s)")
    page.get_by_label("Maximum replicas").fill("3")
    expect(price).to_contain_text("at 3.", timeout=5000)  # the prediction follows the typing
    page.get_by_label("Maximum replicas").fill("1")
    page.get_by_label("Display name (optional)").fill("console demo")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.locator("#progress-state")).to_have_text("READY", timeout=UP)

    page.get_by_role("link", name="Open the endpoint").click()
    expect(page.get_by_role("heading", name="console demo")).to_be_visible()
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#try-answer")).to_have_attribute("data-done", "1", timeout=60_000)
    assert page.locator("#try-answer").inner_text().strip(), "the chat answer streamed in"

    page.get_by_role("link", name="Endpoints", exact=True).click()
    with api(server, key) as c:
        (ep,) = c.get("/v1/endpoints").json()["data"]
    r = row(page, ep["id"])
    expect(r.locator(".badge")).to_have_text("STARTED")
    r.get_by_label("More actions for console demo").click()
    r.get_by_role("button", name="Stop endpoint").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Stop console demo?")
    dialog.get_by_role("button", name="Stop endpoint").click()
    expect(r.locator(".badge")).to_have_text("STOPPED", timeout=60_000)  # no reload: the rows poll

    r.get_by_label("More actions for console demo").click()
    r.get_by_role("button", name="Start endpoint").click()
    expect(r.locator(".badge")).to_have_text("STARTED", timeout=UP)

    page.get_by_role("link", name="Billing").click()
    line = page.get_by_role("row", name=re.compile("console demo"))
    expect(line).to_contain_text("1x_cpu")
    expect(line).to_contain_text("$")
    with api(server, key) as c:
        usage = c.get("/v1/billing/usage").json()
    assert usage["data"] and usage["data"][0]["endpoint"] == ep["id"], "billed while it was ready"
    stop_everything(server, key)
    page.context.close()


def test_the_red_button_cancels_a_queued_deployment(browser: Any, server: Server) -> None:
    key = new_key(server, "bea")
    with api(server, key) as c:
        first = server.create_tiny(key, display_name="holder")
        server.wait_state(first["id"], {"STARTED"}, key=key)
        queued = c.post("/v1/endpoints", json={"model": MODEL, "hardware": "1x_cpu", "display_name": "waiter",
                                               "autoscaling": {"min_replicas": 1, "max_replicas": 1}}).json()
    page = page_of(browser, server, key)
    r = row(page, queued["id"])
    expect(r.locator(".state-message")).to_contain_text("queued: position 1")
    r.get_by_role("button", name="Stop deploying").click()
    expect(r.locator(".badge")).to_have_text("STOPPED", timeout=30_000)
    expect(row(page, first["id"]).locator(".badge")).to_have_text("STARTED")
    stop_everything(server, key)
    page.context.close()


def test_a_shape_that_cannot_be_had_offers_what_would_work(browser: Any, server: Server) -> None:
    page = page_of(browser, server, new_key(server, "cyd"))
    page.goto(f"/deploy?model={MODEL}")
    expect(page.locator("#price")).to_contain_text("per replica-minute")
    page.get_by_label("Maximum replicas").fill("2")
    page.get_by_label("Minimum replicas").fill("2")
    expect(page.locator("#deploy-error")).to_contain_text("Hardware for endpoint not available now")
    page.get_by_role("button", name="Use 1 minimum replica(s) on 1x_cpu").click()
    expect(page.get_by_label("Minimum replicas")).to_have_value("1")
    expect(page.locator("#price")).to_contain_text("at 1 replica(s)")
    expect(page.locator("#deploy-error")).to_be_empty()
    page.context.close()


def test_another_owners_key_sees_none_of_it(browser: Any, server: Server) -> None:
    owner_key, other_key = new_key(server, "dan"), new_key(server, "eve")
    made = server.create_tiny(owner_key, display_name="dan's secret", state="STOPPED")
    with api(server, owner_key) as c:
        route = c.get("/v2/projects/proj_dan/endpoints").json()["data"][0]["id"]
    page = page_of(browser, server, other_key)
    expect(page.locator("td.empty")).to_contain_text("No endpoints yet")
    assert "dan's secret" not in page.content()
    page.goto(f"/endpoints/{route}")
    expect(page.get_by_role("alert")).to_contain_text("not found")
    page.goto("/billing")
    assert "dan's secret" not in page.content()
    page.goto("/admin")
    expect(page.get_by_role("alert")).to_contain_text("for admins")
    # the other key's cookie and token cannot act on it through the API either
    status = page.evaluate("""async (id) => (await fetch(`/v1/endpoints/${id}`, {method: "PATCH",
        headers: {"content-type": "application/json",
                  "x-dedicate-csrf": document.querySelector('meta[name="dedicate-csrf"]').content},
        body: JSON.stringify({state: "STARTED"})})).status""", made["id"])
    assert status == 404
    page.context.close()


def test_what_a_user_names_is_shown_as_text_never_run(browser: Any, server: Server) -> None:
    key = new_key(server, "fay")
    evil = '<script>window.__owned=1</script><img src=x onerror="window.__owned=2">'
    server.create_tiny(key, display_name=evil, state="STOPPED")
    page = page_of(browser, server, key)
    expect(page.get_by_role("link", name=evil)).to_be_visible()
    page.wait_for_timeout(2500)  # a poll of the rows has replaced them once
    assert page.evaluate("window.__owned") is None
    stop_everything(server, key)
    page.context.close()


def test_deploy_and_stop_by_keyboard_alone(browser: Any, server: Server) -> None:
    key = new_key(server, "gus")
    page = page_of(browser, server, key)
    page.goto("/deploy")

    def tab_to(selector: str, limit: int = 40) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("#model")
    page.keyboard.press("Control+A")
    page.keyboard.type(MODEL)
    expect(page.locator("#price")).to_contain_text("per replica-minute")
    tab_to("#display")
    page.keyboard.type("typed")
    tab_to("#deploy-submit")
    page.keyboard.press("Enter")
    expect(page.locator("#progress-state")).to_have_text("READY", timeout=UP)

    page.goto("/")
    tab_to("summary")
    page.keyboard.press("Enter")
    tab_to('button[data-action="stop"]')
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    tab_to("#confirm-ok", limit=4)
    page.keyboard.press("Enter")
    expect(page.locator("tr[data-endpoint] .badge")).to_have_text("STOPPED", timeout=60_000)
    stop_everything(server, key)
    page.context.close()


PAGES = ("/", "/deploy", "/models", "/pricing", "/billing", "/keys", "/admin")


def test_every_page_passes_axe_fits_a_phone_and_is_screenshotted(browser: Any, server: Server) -> None:
    """Admin's view (it sees every page), with an endpoint so the tables have rows."""
    made = server.create_tiny(display_name="shown in screenshots", state="STOPPED")
    with server.client() as c:
        route = c.get("/v2/projects/proj_admin/endpoints").json()["data"][0]["id"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    axe = axe_api.Axe()
    problems: list[str] = []
    for width in (1280, 390):
        page = page_of(browser, server, None, width)
        page.goto("/signin")
        page.screenshot(path=str(SHOTS / f"signin-{width}.png"), full_page=True)
        sign_in(page, server.admin_key)
        for path in (*PAGES, f"/endpoints/{route}", f"/endpoints/{made['id']}"):
            page.goto(path)
            page.wait_for_load_state("networkidle")
            name = path.strip("/").replace("/", "-") or "endpoints"
            page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
            result = axe.run(page)
            for v in result.response["violations"]:
                if v["impact"] in ("serious", "critical"):
                    problems.append(f"{path} at {width}px: {v['id']} ({v['impact']}): {v['help']}")
            wide = page.evaluate("document.documentElement.scrollWidth")
            if wide > width:
                problems.append(f"{path} at {width}px scrolls sideways: {wide}px wide")
        page.context.close()
    assert not problems, "\n".join(problems)
    assert len(list(SHOTS.glob("*.png"))) >= 2 * (len(PAGES) + 3)
