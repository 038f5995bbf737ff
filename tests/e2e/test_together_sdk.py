"""The published Together Python SDK (together==2.42.0) drives a real dedicate server unchanged.

The SDK lives in its own virtual environment (`make clients`): each step runs a
small script under that environment's Python, which prints one JSON document
that the test parses. The client is built as users build it against dedicate:
`Together(api_key=..., base_url=<server>/v1, max_retries=0)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ROOT, Server

pytestmark = pytest.mark.e2e

CLIENTS_VERSION = "2.42.0"
MODEL = "dedicate/tiny-chat"
HARDWARE = "1x_cpu"
UNKNOWN_ID = "endpoint-00000000-0000-4000-8000-000000000000"
CALL_TIMEOUT_S = 60.0
WAIT_TIMEOUT_S = 150.0

# Every script starts with this: the client, JSON output, and helpers to wait and to catch SDK errors.
PRELUDE = """
import json, os, sys, time
import together
from together import Together

client = Together(api_key=os.environ["SDK_KEY"], base_url=os.environ["SDK_BASE_URL"], max_retries=0)
ARGS = json.loads(os.environ["SDK_ARGS"])

def dump(obj):
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj

def out(obj):
    print(json.dumps(obj, default=dump))

def wait_state(endpoint_id, state, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        ep = client.endpoints.retrieve(endpoint_id)
        if ep.state == state or time.monotonic() > deadline:
            return ep
        time.sleep(0.3)

def catch(fn, *args, **kwargs):
    try:
        return {"ok": dump(fn(*args, **kwargs))}
    except together.APIStatusError as e:
        return {"error_class": type(e).__name__, "status": e.status_code, "body": e.body,
                "is_api_status_error": True}
"""


def clients_python() -> Path:
    """The clients' Python; missing is a failure, never a skip."""
    path = ROOT / ".venv-clients" / "bin" / "python"
    if not path.exists():
        pytest.fail(f"{path} is missing: the together clients are not installed; run `make clients` "
                    f"(it installs together=={CLIENTS_VERSION} into .venv-clients)", pytrace=False)
    return path


class Sdk:
    """Runs SDK scripts against one server with one key."""

    def __init__(self, server: Server, home: Path, key: str) -> None:
        self.server = server
        self.python = str(clients_python())
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOGETHER_", "PYTHON"))}
        env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                    "TOGETHER_TELEMETRY_DISABLED": "1", "SDK_KEY": key, "SDK_BASE_URL": f"{server.url}/v1"})
        self.env = env

    def __call__(self, script: str, timeout: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        code = PRELUDE + textwrap.dedent(script)
        try:
            proc = subprocess.run([self.python, "-c", code], env={**self.env, "SDK_ARGS": json.dumps(args)},
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
                                  cwd=self.env["HOME"])
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"SDK script did not finish in {timeout} s\nstdout: {exc.stdout!r}\n"
                                 f"stderr: {exc.stderr!r}\nserver log:\n{self.server.log_tail()}") from None
        assert proc.returncode == 0, (f"SDK script failed (rc={proc.returncode}):\n{proc.stderr}\n{proc.stdout}\n"
                                      f"server log:\n{self.server.log_tail()}")
        lines = proc.stdout.strip().splitlines()
        assert lines, f"SDK script printed nothing:\n{proc.stderr}"
        return json.loads(lines[-1])


@pytest.fixture(scope="module")
def sdk(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Sdk:
    client = Sdk(server, tmp_path_factory.mktemp("sdk-home"), server.admin_key)
    version = client("out(together.__version__)")
    if version != CLIENTS_VERSION:
        pytest.fail(f"expected the together SDK {CLIENTS_VERSION}, found {version!r}; run `make clients`",
                    pytrace=False)
    return client


@pytest.fixture(scope="module")
def endpoint(sdk: Sdk, server: Server) -> Iterator[dict[str, Any]]:
    """One endpoint made with `client.endpoints.create`, shared by the lifecycle tests below, in order."""
    made = sdk("""
        ep = client.endpoints.create(model=ARGS["model"], hardware=ARGS["hardware"],
                                     autoscaling={"min_replicas": 1, "max_replicas": 1},
                                     display_name="sdk endpoint")
        out({"created": ep, "started": wait_state(ep.id, "STARTED")})
    """, timeout=WAIT_TIMEOUT_S, model=MODEL, hardware=HARDWARE)
    try:
        yield made
    finally:
        with server.client() as c, contextlib.suppress(Exception):
            c.delete(f"/v1/endpoints/{made['created']['id']}")


def test_sdk_list_hardware_for_model_offers_cpu_with_price_and_availability(sdk: Sdk) -> None:
    got = sdk("""
        out({"for_model": client.endpoints.list_hardware(model=ARGS["model"]),
             "all": client.endpoints.list_hardware(),
             "zones": client.endpoints.list_avzones()})
    """, model=MODEL)
    for_model = got["for_model"]
    assert for_model["object"] == "list"
    cpu = {h["id"]: h for h in for_model["data"]}[HARDWARE]
    assert cpu["object"] == "hardware"
    assert cpu["pricing"]["cents_per_minute"] > 0
    assert cpu["specs"]["gpu_count"] == 1
    assert cpu["availability"] == {"status": "available"}
    # Without ?model= there is no availability, and every shape of the catalog is listed.
    assert all(h.get("availability") is None for h in got["all"]["data"])
    assert {h["id"] for h in for_model["data"]} <= {h["id"] for h in got["all"]["data"]}
    assert got["zones"]["avzones"]


def test_sdk_create_returns_an_endpoint_that_reaches_started(endpoint: dict[str, Any]) -> None:
    created, started = endpoint["created"], endpoint["started"]
    assert created["id"].startswith("endpoint-")
    assert created["state"] in ("PENDING", "STARTING", "STARTED")
    assert created["object"] == "endpoint"
    assert created["type"] == "dedicated"
    assert created["model"] == MODEL
    assert created["hardware"] == HARDWARE
    assert created["autoscaling"] == {"min_replicas": 1, "max_replicas": 1}
    assert created["display_name"] == "sdk endpoint"
    assert created["owner"] == "admin"
    assert started["id"] == created["id"]
    assert started["name"] == created["name"]
    assert started["state"] == "STARTED"


def test_sdk_chat_completion_through_the_gateway_reports_usage(sdk: Sdk, endpoint: dict[str, Any]) -> None:
    name = endpoint["created"]["name"]
    got = sdk("""
        r = client.chat.completions.create(model=ARGS["name"], messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=8)
        out(r)
    """, name=name)
    assert got["object"] == "chat.completion"
    assert got["model"] == name
    assert got["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(got["choices"][0]["message"]["content"], str)
    assert got["choices"][0]["finish_reason"] in ("length", "stop")
    usage = got["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_sdk_retrieve_and_list_show_the_endpoint(sdk: Sdk, endpoint: dict[str, Any]) -> None:
    ep_id = endpoint["created"]["id"]
    got = sdk("""
        out({"retrieved": client.endpoints.retrieve(ARGS["id"]),
             "mine": client.endpoints.list(mine=True),
             "dedicated": client.endpoints.list(type="dedicated", mine=True),
             "serverless": client.endpoints.list(type="serverless")})
    """, id=ep_id)
    assert got["retrieved"]["id"] == ep_id
    assert got["retrieved"]["name"] == endpoint["created"]["name"]
    assert got["mine"]["object"] == "list"
    entry = {e["id"]: e for e in got["mine"]["data"]}[ep_id]
    assert entry["object"] == "endpoint"
    assert entry["type"] == "dedicated"
    assert entry["model"] == MODEL
    assert entry["owner"] == "admin"
    assert ep_id in {e["id"] for e in got["dedicated"]["data"]}
    assert got["serverless"]["data"] == []


def test_sdk_list_mine_shows_only_the_callers_endpoints(sdk: Sdk, server: Server,
                                                        tmp_path: Path) -> None:
    with server.client() as c:
        resp = c.post("/v1/keys", json={"owner": "acme", "name": "sdk tenant"})
    assert resp.status_code == 200, resp.text
    tenant = Sdk(server, tmp_path / "tenant", resp.json()["key"])
    # Created STOPPED: no replica is needed to prove who sees what.
    theirs = tenant("""
        out(client.endpoints.create(model=ARGS["model"], hardware=ARGS["hardware"], state="STOPPED",
                                    autoscaling={"min_replicas": 1, "max_replicas": 1}))
    """, model=MODEL, hardware=HARDWARE)
    try:
        assert theirs["state"] == "STOPPED"
        assert theirs["owner"] == "acme"
        tenant_view = tenant("out(client.endpoints.list(mine=True))")
        assert [(e["id"], e["owner"]) for e in tenant_view["data"]] == [(theirs["id"], "acme")]

        admin_view = sdk("""
            out({"mine": client.endpoints.list(mine=True), "all": client.endpoints.list(mine=False)})
        """)
        assert theirs["id"] not in {e["id"] for e in admin_view["mine"]["data"]}
        assert {e["owner"] for e in admin_view["mine"]["data"]} <= {"admin"}
        assert theirs["id"] in {e["id"] for e in admin_view["all"]["data"]}

        # Someone else's endpoint is simply not there for a tenant.
        if admin_view["mine"]["data"]:
            hidden = tenant("out(catch(client.endpoints.retrieve, ARGS['id']))",
                            id=admin_view["mine"]["data"][0]["id"])
            assert hidden["error_class"] == "NotFoundError"
    finally:
        gone = tenant("out(catch(client.endpoints.delete, ARGS['id']))", id=theirs["id"])
        assert gone == {"ok": None}


def test_sdk_stop_then_partial_autoscaling_update_merges_with_stored_bound(
        sdk: Sdk, endpoint: dict[str, Any]) -> None:
    got = sdk("""
        ep_id = ARGS["id"]
        stopping = client.endpoints.update(ep_id, state="STOPPED")
        stopped = wait_state(ep_id, "STOPPED")
        only_max = client.endpoints.update(ep_id, autoscaling={"max_replicas": 3})
        only_min = client.endpoints.update(ep_id, autoscaling={"min_replicas": 2})
        too_high = catch(client.endpoints.update, ep_id, autoscaling={"min_replicas": 4})
        after_refusal = client.endpoints.retrieve(ep_id)
        back = client.endpoints.update(ep_id, autoscaling={"min_replicas": 1}, display_name="renamed by sdk")
        out({"stopping": stopping, "stopped": stopped, "only_max": only_max, "only_min": only_min,
             "too_high": too_high, "after_refusal": after_refusal, "back": back})
    """, timeout=WAIT_TIMEOUT_S, id=endpoint["created"]["id"])
    assert got["stopping"]["state"] in ("STOPPING", "STOPPED")
    assert got["stopped"]["state"] == "STOPPED"
    assert got["only_max"]["autoscaling"] == {"min_replicas": 1, "max_replicas": 3}
    assert got["only_min"]["autoscaling"] == {"min_replicas": 2, "max_replicas": 3}
    # min 4 merged with the stored max 3 breaks min <= max: refused, nothing changed.
    assert got["too_high"]["error_class"] == "BadRequestError"
    assert got["too_high"]["status"] == 400
    assert got["after_refusal"]["autoscaling"] == {"min_replicas": 2, "max_replicas": 3}
    assert got["back"]["autoscaling"] == {"min_replicas": 1, "max_replicas": 3}
    assert got["back"]["display_name"] == "renamed by sdk"
    # Config changes on a stopped endpoint do not start it.
    assert got["back"]["state"] == "STOPPED"


def test_sdk_start_brings_a_stopped_endpoint_back_to_started(sdk: Sdk, endpoint: dict[str, Any]) -> None:
    got = sdk("""
        ep_id = ARGS["id"]
        if client.endpoints.retrieve(ep_id).state != "STOPPED":  # when run on its own
            client.endpoints.update(ep_id, state="STOPPED")
            wait_state(ep_id, "STOPPED")
        starting = client.endpoints.update(ep_id, state="STARTED")
        out({"starting": starting, "started": wait_state(ep_id, "STARTED")})
    """, timeout=WAIT_TIMEOUT_S, id=endpoint["created"]["id"])
    assert got["starting"]["state"] in ("PENDING", "STARTING", "STARTED")
    assert got["started"]["state"] == "STARTED"
    assert got["started"]["id"] == endpoint["created"]["id"]


def test_sdk_delete_answers_204_then_retrieve_raises_not_found(sdk: Sdk, endpoint: dict[str, Any]) -> None:
    got = sdk("""
        raw = client.endpoints.with_raw_response.delete(ARGS["id"])
        out({"status": raw.status_code, "body": raw.http_response.text, "parsed": raw.parse(),
             "after": catch(client.endpoints.retrieve, ARGS["id"]),
             "listed": [e.id for e in client.endpoints.list(mine=True).data]})
    """, id=endpoint["created"]["id"])
    assert got["status"] == 204
    assert got["body"] == ""
    assert got["parsed"] is None
    assert got["after"]["error_class"] == "NotFoundError"
    assert got["after"]["status"] == 404
    assert endpoint["created"]["id"] not in got["listed"]


def test_sdk_errors_map_to_the_sdk_exception_classes(sdk: Sdk) -> None:
    got = sdk("""
        bad_key = Together(api_key="ddc_not_a_real_key", base_url=os.environ["SDK_BASE_URL"], max_retries=0)
        out({
            "not_found": catch(client.endpoints.retrieve, ARGS["unknown"]),
            "update_not_found": catch(client.endpoints.update, ARGS["unknown"], display_name="x"),
            "delete_not_found": catch(client.endpoints.delete, ARGS["unknown"]),
            "no_hardware": catch(client.endpoints.create, model=ARGS["model"], hardware="",
                                 autoscaling={"min_replicas": 1, "max_replicas": 1}),
            "bad_bounds": catch(client.endpoints.create, model=ARGS["model"], hardware=ARGS["hardware"],
                                autoscaling={"min_replicas": 2, "max_replicas": 1}),
            "bad_key": catch(bad_key.endpoints.list),
            "bad_key_chat": catch(bad_key.chat.completions.create, model="admin/anything",
                                  messages=[{"role": "user", "content": "hi"}]),
        })
    """, unknown=UNKNOWN_ID, model=MODEL, hardware=HARDWARE)
    for case in ("not_found", "update_not_found", "delete_not_found"):
        assert got[case]["error_class"] == "NotFoundError", got[case]
        assert got[case]["status"] == 404
        assert "not found" in got[case]["body"]["error"]["message"]

    assert got["no_hardware"]["error_class"] == "BadRequestError"
    assert got["no_hardware"]["status"] == 400
    assert got["no_hardware"]["body"]["error"]["message"].startswith("hardware is required")
    assert got["no_hardware"]["body"]["error"]["param"] == "hardware"

    assert got["bad_bounds"]["error_class"] == "BadRequestError"
    assert "must not exceed" in got["bad_bounds"]["body"]["error"]["message"]

    for case in ("bad_key", "bad_key_chat"):
        assert got[case]["error_class"] == "AuthenticationError", got[case]
        assert got[case]["status"] == 401
        assert got[case]["body"]["error"]["type"] == "authentication_error"
