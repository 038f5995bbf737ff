"""The together 3.1.1 SDK's v2 calls that `tg` does not make, against a real server: validateOnly,
an etag conflict the SDK does not retry, cursor pages over 120 endpoints, and analytics of real
requests served by a real demo replica.

Each script runs in the 3.1.1 environment (.venv-tg3), which has its own pins.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import openai
import pytest

from tests.e2e.harness import ROOT, Server
from tests.e2e.test_tg3_cli import new_key

pytestmark = pytest.mark.e2e

PRELUDE = """
import json, os, sys
import httpx
import together
from together import Together

sent = []
http = httpx.Client(event_hooks={"request": [lambda r: sent.append(f"{r.method} {r.url.path}")]})
client = Together(api_key=os.environ["SDK_KEY"], base_url=os.environ["SDK_BASE_URL"],
                  project_id=os.environ["SDK_PROJECT"], http_client=http)
ARGS = json.loads(os.environ["SDK_ARGS"])

def out(obj):
    print(json.dumps(obj, default=lambda o: o.model_dump(mode="json", by_alias=True) if hasattr(o, "model_dump")
                     else str(o)))
"""


def sdk(server: Server, key: str, script: str, timeout: float = 120.0, **args: Any) -> Any:
    python = ROOT / ".venv-tg3" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make clients`", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOGETHER_")}
    env.update(SDK_KEY=key, SDK_BASE_URL=server.url, SDK_PROJECT="proj_sam", SDK_ARGS=json.dumps(args))
    proc = subprocess.run([str(python), "-c", PRELUDE + script], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{server.log_tail()}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    return new_key(server, "sam")


def cpu_config(server: Server, key: str) -> tuple[str, str]:
    with server.client(key) as c:
        (model,) = c.get("/v2/supported-models", params={"search": "dedicate/tiny-chat"}).json()["data"]
    profile = next(p for p in model["deploymentProfiles"] if p["gpuType"] == "cpu")
    return profile["model"], profile["config"]


def test_sdk_validate_only_prices_a_deployment_and_creates_none(server: Server, key: str) -> None:
    model, config = cpu_config(server, key)
    got = sdk(server, key, """
ep = client.endpoints.create(name="priced")
dep = client.endpoints.deployments.create(ep.id, name="d", autoscaling={"minReplicas": 1, "maxReplicas": 3},
                                          model=ARGS["model"], config=ARGS["config"], validate_only=True)
after = client.endpoints.retrieve(ep.id)
out({"dep": dep, "deployments": after.deployments})
""", model=model, config=config)
    assert got["deployments"] == []
    assert float(got["dep"]["pricing"]["centsPerHourAtMax"]) == 3 * float(got["dep"]["pricing"]["centsPerHourAtMin"])


def test_sdk_an_etag_conflict_is_a_conflict_error_sent_once(server: Server, key: str) -> None:
    got = sdk(server, key, """
ep = client.endpoints.create(name="contended")
client.endpoints.update(ep.id, etag=ep.etag, visibility="VISIBILITY_INTERNAL", update_mask="visibility")
sent.clear()
try:
    client.endpoints.update(ep.id, etag=ep.etag, visibility="VISIBILITY_PRIVATE", update_mask="visibility")
    out({"raised": None})
except together.ConflictError as exc:
    out({"raised": type(exc).__name__, "status": exc.status_code, "sent": sent,
         "visibility": client.endpoints.retrieve(ep.id).visibility})
""")
    assert got["raised"] == "ConflictError" and got["status"] == 409
    assert len([s for s in got["sent"] if s.startswith("PATCH")]) == 1, "x-should-retry: false: no retry"
    assert got["visibility"] == "VISIBILITY_INTERNAL", "the losing write changed nothing"


def test_sdk_pages_over_120_endpoints_without_loss_or_repeat(server: Server, key: str) -> None:
    got = sdk(server, key, """
made = [client.endpoints.create(name=f"page-{i:03d}").id for i in range(120)]
seen = [ep.id for ep in client.endpoints.list(limit=50)]
out({"made": made, "seen": seen, "pages": sum(1 for s in sent if s.endswith("/endpoints") and s.startswith("GET"))})
""", timeout=300)
    mine = [x for x in got["seen"] if x in set(got["made"])]
    assert mine == got["made"] and len(set(got["seen"])) == len(got["seen"])
    assert got["pages"] >= 3


def test_sdk_analytics_count_the_requests_a_replica_served(server: Server, key: str) -> None:
    model, config = cpu_config(server, key)
    made = sdk(server, key, """
ep = client.endpoints.create(name="measured")
dep = client.endpoints.deployments.create(ep.id, name="d", autoscaling={"minReplicas": 1, "maxReplicas": 1},
                                          model=ARGS["model"], config=ARGS["config"])
out({"ep": ep.id, "dep": dep.id})
""", model=model, config=config)
    deadline = time.monotonic() + 150
    with server.client(key) as c:
        while time.monotonic() < deadline:
            dep = c.get(f"/v2/projects/proj_sam/endpoints/{made['ep']}/deployments/{made['dep']}").json()
            if dep["status"]["readyReplicas"] >= 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"never ready: {dep}\n{server.log_tail()}")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    for _ in range(20):
        client.chat.completions.create(model="sam/measured", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2)
    time.sleep(5)  # the gateway writes its minutes every 2 s
    got = sdk(server, key, """
a = client.endpoints.analytics(ARGS["ep"], granularity="1m", include_time_series=True)
out(a)
""", ep=made["ep"])
    req = got["metrics"]["requestMetrics"]
    assert req["totalRequests"] == "20" and req["requestsByStatusCode"] == {"200": "20"}
    assert int(got["metrics"]["tokenMetrics"]["totalOutputTokens"]) > 0
    assert got["metrics"]["latencyMetrics"]["latencyP50Ms"] > 0
    (per,) = got["deploymentAnalytics"]
    assert per["deploymentId"] == made["dep"] and per["metrics"]["requestMetrics"]["totalRequests"] == "20"
    assert sum(p["values"]["requests"] for p in got["timeSeries"]) == 20
