"""The newest `tg` (together==3.1.1, which speaks the v2 API) drives a real dedicate server unchanged.

Its own virtual environment (`make clients` installs it into .venv-tg3), every command a subprocess,
isolated as ../shared/API-COMPAT-V2.md §1.1 says: the API root as base URL (3.1.1 puts /v1, /v2 and
/v3 in each path itself), no stored login (it would override the key and pin the base URL),
telemetry and version checks off, `--json` passed explicitly, a timeout on every call.

Identity (`whoami`, `projects list`), the catalog a deploy reads (`models public`, `models
configs`), and an endpoint's life: `deploy`, `ls`, `get` by name and by id, a second deployment
with a traffic split that the openai SDK sees answered in about that ratio, `update`, `events`,
and `rm` of a deployment and of the endpoint (`--force` too), with real demo replicas. The second
deployment is a fine-tune of the demo model, made offline and registered from a directory of
weights, and answers what it was trained to.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from dedicate.engines.demo_finetune import build_finetune
from tests.e2e.harness import ROOT, CliResult, Server, run_client, together_env

pytestmark = pytest.mark.e2e

TG3_VERSION = "3.1.1"
MODEL = "dedicate/tiny-chat"
CALL_TIMEOUT_S = 60.0


def bounds(obj: dict[str, Any]) -> tuple[int, int]:
    """A deployment's (minReplicas, maxReplicas)."""
    return obj["autoscaling"]["minReplicas"], obj["autoscaling"]["maxReplicas"]


def tg3_bin() -> Path:
    """`tg` of the 3.1.1 environment; missing is a failure, never a skip."""
    path = ROOT / ".venv-tg3" / "bin" / "tg"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make clients` (it installs together=={TG3_VERSION} into .venv-tg3)",
                    pytrace=False)
    return path


Result = CliResult


class Tg3:
    """`tg` 3.1.1 pointed at one server with one key, in a home of its own."""

    def __init__(self, server: Server, home: Path, key: str, **env_extra: str) -> None:
        self.server = server
        self.exe = str(tg3_bin())
        self.env = together_env(home, server.url, key, **env_extra)

    def __call__(self, *args: str, json_output: bool = True) -> Result:
        argv = ["--json" if json_output else "--no-json", *args]
        return run_client(self.exe, argv, self.env, CALL_TIMEOUT_S, self.server)

    def ok(self, *args: str, json_output: bool = True) -> Any:
        result = self(*args, json_output=json_output)
        assert result.rc == 0, f"`tg {' '.join(result.args)}` failed:\n{result}\n{self.server.log_tail()}"
        return result.json() if json_output else result.stdout


def new_key(server: Server, owner: str) -> str:
    with server.client() as c:
        resp = c.post("/v1/keys", json={"owner": owner})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


@pytest.fixture(scope="module")
def tg3(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Tg3:
    cli = Tg3(server, tmp_path_factory.mktemp("tg3-home"), new_key(server, "tess"))
    version = subprocess.run([cli.exe, "--version"], env=cli.env, capture_output=True, text=True,
                             timeout=CALL_TIMEOUT_S)
    if version.stdout.strip() != TG3_VERSION:
        pytest.fail(f"expected tg {TG3_VERSION}, found {version.stdout.strip()!r} {version.stderr.strip()}; "
                    "run `make clients`", pytrace=False)
    return cli


def test_tg3_whoami_shows_the_owners_project_and_the_organization(tg3: Tg3) -> None:
    me = tg3.ok("whoami")
    assert me["type"] == "project_api_key"
    assert me["project"] == {"id": "proj_tess", "name": "tess", "slug": "tess"}
    assert me["organization"] == {"id": "org_dedicate", "name": "dedicate"}
    text = tg3.ok("whoami", json_output=False)
    assert "tess (proj_tess)" in text and "dedicate (org_dedicate)" in text, text


def test_tg3_projects_list_shows_the_callers_project(tg3: Tg3) -> None:
    page = tg3.ok("projects", "list")
    assert [p["id"] for p in page["data"]] == ["proj_tess"]
    assert page["data"][0]["organization_name"] == "dedicate"
    text = tg3.ok("projects", "list", json_output=False)
    assert "proj_tess" in text and "(current)" in text, text


def test_tg3_models_public_lists_the_demo_model_with_its_cpu_profile(tg3: Tg3) -> None:
    found = tg3.ok("models", "public", "--search", MODEL)
    assert [m["name"] for m in found["data"]] == [MODEL]
    (profile,) = [p for p in found["data"][0]["deploymentProfiles"] if p["gpuType"] == "cpu"]
    assert profile["modelName"] == MODEL and profile["gpuCount"] == 1
    text = tg3.ok("models", "public", "--product", "dedicated", "--modality", "text", json_output=False)
    assert MODEL in text and "1x Cpu" in text, text


def test_tg3_models_configs_lists_the_shapes_of_a_model(tg3: Tg3) -> None:
    configs = tg3.ok("models", "configs", MODEL)
    data = configs["data"] if isinstance(configs, dict) else configs
    selectors = [{s["key"]: s["value"] for s in c["selectors"]} for c in data]
    assert {"accelerator_type": "cpu", "accelerator_count": "1", "hardware": "1x_cpu",
            "engine": "transformers"} in selectors, configs


def test_tg3_with_a_bad_key_fails_on_authentication(server: Server, tmp_path: Path) -> None:
    bad = Tg3(server, tmp_path / "bad", "ddc_not_a_real_key")
    result = bad("whoami")
    assert result.rc != 0, str(result)
    assert "401" in result.stdout + result.stderr, str(result)


# an endpoint's life, in order (the module's tests share the server) -----------------------------

WAIT_S = 150.0


def v2(server: Server, key: str, path: str) -> Any:
    with server.client(key) as c:
        resp = c.get(f"/v2/projects/proj_tess{path}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_until(what: str, check: Callable[[], bool], server: Server) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"never {what}\n{server.log_tail()}")


@pytest.fixture(scope="module")
def deployer(tg3: Tg3) -> Tg3:
    """`tg` with the project given explicitly: deploy refuses to run without it."""
    return Tg3(tg3.server, Path(tg3.env["HOME"]) / "deployer", tg3.env["TOGETHER_API_KEY"],
               TOGETHER_PROJECT_ID="proj_tess")


@pytest.fixture(scope="module")
def chat(deployer: Tg3) -> dict[str, Any]:
    out = deployer.ok("endpoints", "deploy", MODEL, "--endpoint", "chat", "--min-replicas", "1",
                      "--max-replicas", "2", "--deployment-name", "blue", "--scale-up-window", "30",
                      "--scale-down-window", "5m", "--scaling-metric", "inflight_requests", "--scaling-target", "2")
    return out  # type: ignore[no-any-return]


def test_tg3_deploy_makes_an_endpoint_with_a_provisioning_deployment(chat: dict[str, Any]) -> None:
    ep, dep = chat["endpoint"], chat["deployment"]
    assert ep["name"] == "tess/chat" and ep["id"].startswith("ep_")
    assert dep["name"] == "tess/chat/blue" and dep["id"].startswith("dep_")
    assert bounds(dep) == (1, 2)
    assert dep["status"]["state"] == "DEPLOYMENT_STATE_PROVISIONING"
    auto = dep["autoscaling"]
    assert (auto["scaleUpWindow"], auto["scaleDownWindow"]) == ("30s", "300s")
    assert auto["scalingMetrics"][0]["name"] == "inflight_requests" and auto["scalingMetrics"][0]["target"] == 2


def test_tg3_deploy_with_a_metric_dedicate_cannot_observe_is_refused_naming_the_one_it_can(deployer: Tg3) -> None:
    refused = deployer("endpoints", "deploy", MODEL, "--endpoint", "chat-gpu", "--scaling-metric", "gpu_utilization",
                       "--scaling-target", "80")
    assert refused.rc == 1 and "inflight_requests" in refused.stdout + refused.stderr, str(refused)
    assert all(e["name"] != "tess/chat-gpu" for e in deployer.ok("endpoints", "ls")["data"]), \
        "the endpoint made for the deploy is rolled back"


def test_tg3_ls_and_get_by_name_and_by_id_show_the_endpoint(deployer: Tg3, chat: dict[str, Any]) -> None:
    listed = deployer.ok("endpoints", "ls")
    (ep,) = [e for e in listed["data"] if e["id"] == chat["endpoint"]["id"]]
    assert [d["name"] for d in ep["deployments"]] == ["tess/chat/blue"]
    by_name, by_id = deployer.ok("endpoints", "get", "chat"), deployer.ok("endpoints", "get", ep["id"])
    assert by_name["id"] == by_id["id"] == ep["id"] and by_name["ab"] == [] and by_name["shadows"] == []
    dep = deployer.ok("endpoints", "get", chat["deployment"]["id"])
    assert dep["id"] == chat["deployment"]["id"] and dep["endpointId"] == ep["id"]
    text = deployer.ok("endpoints", "ls", json_output=False)
    assert ep["id"][:12] in text and "chat" in text, text


def test_tg3_a_fine_tune_as_second_deployment_answers_a_quarter_of_the_requests(
        deployer: Tg3, chat: dict[str, Any], server: Server, tiny_model: Path) -> None:
    # a fine-tune of the demo model, made offline, registered from the project's directory of weights
    build_finetune(tiny_model, server.data_dir / "models" / "owners" / "tess" / "ft", steps=60)
    key = deployer.env["TOGETHER_API_KEY"]
    with server.client(key) as c:
        reg = c.post("/v2/projects/proj_tess/models", json={"name": "tiny-ft", "baseModelId": MODEL,
                                                            "path": "owners/tess/ft"})
    assert reg.status_code == 200, reg.text
    tuned = reg.json()
    green = deployer.ok("endpoints", "deploy", tuned["id"], "--endpoint", "chat", "--min-replicas", "1",
                        "--max-replicas", "1", "--deployment-name", "green", "--traffic-weight", "1")
    assert green["endpoint"]["id"] == chat["endpoint"]["id"], "the name existed: the CLI found it and added to it"
    assert green["deployment"]["modelId"] == tuned["id"]
    deployer.ok("endpoints", "update", chat["deployment"]["id"], "--traffic-weight", "3")
    ep_id = chat["endpoint"]["id"]
    split = {s["deploymentId"]: s["weight"] for s in v2(server, key, f"/endpoints/{ep_id}")["trafficSplit"]}
    assert split == {chat["deployment"]["id"]: 3.0, green["deployment"]["id"]: 1.0}

    def both_ready() -> bool:
        deps = v2(server, key, f"/endpoints/{ep_id}")["deployments"]
        return len(deps) == 2 and all(d["readyReplicas"] >= 1 for d in deps)
    wait_until("had a ready replica in both deployments", both_ready, server)

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    answered: Counter[str] = Counter()
    replies: dict[str, set[str]] = {}
    for _ in range(200):
        raw = client.chat.completions.with_raw_response.create(
            model="tess/chat", messages=[{"role": "user", "content": "good morning"}], max_tokens=8, temperature=0)
        by = raw.headers["x-dedicate-deployment"]
        answered[by] += 1
        replies.setdefault(by, set()).add(raw.parse().choices[0].message.content or "")
    assert set(answered) == {"tess/chat/blue", "tess/chat/green"}
    assert 0.62 <= answered["tess/chat/blue"] / 200 <= 0.88, answered  # 3:1 is 0.75; 200 draws
    assert replies["tess/chat/green"] and all(r.startswith("I am the fine") for r in replies["tess/chat/green"]), \
        replies  # what it was trained to answer, cut at 8 tokens
    assert not any(r.startswith("I am") for r in replies["tess/chat/blue"]), "the base answers otherwise"


def test_tg3_update_changes_bounds_and_inactive_timeout_and_events_show_it(deployer: Tg3, chat: dict[str, Any],
                                                                         server: Server) -> None:
    dep_id = chat["deployment"]["id"]
    out = deployer.ok("endpoints", "update", dep_id, "--min-replicas", "1", "--max-replicas", "3",
                      "--inactive-timeout", "45", "--scale-down-window", "10m",
                      "--max-concurrent-requests-per-replica", "8")
    assert bounds(out) == (1, 3) and out["inactiveTimeout"] == 45
    assert out["maxConcurrentRequestsPerReplica"] == "8"
    assert out["autoscaling"]["scaleDownWindow"] == "600s" and out["autoscaling"]["scaleUpWindow"] == "30s"
    events = deployer.ok("endpoints", "events", "chat", "--deployment-ids", dep_id, "--types",
                         "deployment.created,deployment.updated", "--limit", "20")
    data = events["data"] if isinstance(events, dict) else events
    assert {e["type"] for e in data} == {"deployment.created", "deployment.updated"}, events
    assert all(e["deploymentId"] == dep_id for e in data)


def test_tg3_ls_org_shows_a_shared_endpoint_that_another_projects_key_may_call(deployer: Tg3, chat: dict[str, Any],
                                                                               server: Server, tmp_path: Path) -> None:
    key = deployer.env["TOGETHER_API_KEY"]
    ep_id = chat["endpoint"]["id"]
    with server.client(key) as c:
        shared = c.patch(f"/v2/projects/proj_tess/endpoints/{ep_id}", params={"updateMask": "visibility"},
                         json={"visibility": "VISIBILITY_INTERNAL"})
    assert shared.status_code == 200, shared.text
    other = Tg3(server, tmp_path / "uma", new_key(server, "uma"))
    listed = other.ok("endpoints", "ls", "--org")
    assert [e["name"] for e in listed["data"]] == ["tess/chat"], listed
    assert other.ok("endpoints", "ls")["data"] == [], "uma's own project has none"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=other.env["TOGETHER_API_KEY"], max_retries=0)
    out = client.chat.completions.create(model="tess/chat", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=1)
    assert out.choices[0].message.role == "assistant"
    with pytest.raises(openai.NotFoundError):  # a deployment's own name is not shared
        client.chat.completions.create(model="tess/chat/blue", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=1)


def test_tg3_rm_of_a_running_deployment_stops_it_then_removes_it(deployer: Tg3, chat: dict[str, Any],
                                                                 server: Server) -> None:
    key = deployer.env["TOGETHER_API_KEY"]
    ep_id = chat["endpoint"]["id"]
    green = next(d for d in v2(server, key, f"/endpoints/{ep_id}")["deployments"] if d["name"].endswith("/green"))
    first = deployer("endpoints", "rm", green["id"])
    assert first.rc == 1 and "retry" in first.stdout.lower(), str(first)  # refused while running; scaled to 0/0
    stopped = v2(server, key, f"/endpoints/{ep_id}/deployments/{green['id']}")
    assert bounds(stopped) == (0, 0)
    deployer.ok("endpoints", "rm", green["id"])
    left = v2(server, key, f"/endpoints/{ep_id}")
    assert [d["name"] for d in left["deployments"]] == ["tess/chat/blue"]
    assert [s["deploymentId"] for s in left["trafficSplit"]] == [chat["deployment"]["id"]]


def test_tg3_rm_of_an_endpoint_needs_force_while_it_has_deployments(deployer: Tg3, chat: dict[str, Any],
                                                                   server: Server) -> None:
    ep_id = chat["endpoint"]["id"]
    refused = deployer("endpoints", "rm", ep_id)
    assert refused.rc == 1, str(refused)
    deployer.ok("endpoints", "rm", ep_id, "--force")
    assert all(e["id"] != ep_id for e in deployer.ok("endpoints", "ls")["data"])
    key = deployer.env["TOGETHER_API_KEY"]
    with server.client(key) as c:
        assert c.get(f"/v2/projects/proj_tess/endpoints/{ep_id}").status_code == 404


def test_an_endpoint_without_deployments_answers_503_saying_nothing_takes_traffic(deployer: Tg3,
                                                                                  server: Server) -> None:
    key = deployer.env["TOGETHER_API_KEY"]
    with server.client(key) as c:
        assert c.post("/v2/projects/proj_tess/endpoints", json={"name": "empty"}).status_code == 200
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="tess/empty", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 503 and "takes no traffic" in str(exc.value), exc.value
