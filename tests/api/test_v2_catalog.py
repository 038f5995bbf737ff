"""The v2 identity and catalog routes, in process: what `tg` 3.1.1 reads before it deploys.

The config of ``tests/api/conftest.py`` declares one 8-GPU H100 node run by the synthetic engine and
four CPU slots run by the transformers engine, so the catalog offers the demo model on 1x_cpu and
the synthetic models on the H100 shapes they fit.
"""

from __future__ import annotations

from typing import Any

from dedicate.domain.offerings import CATALOG_PROJECT, instance_name, model_id
from dedicate.domain.records import Replica
from dedicate.domain.replicas import ReplicaFacts
from tests.api.conftest import T0, App

TINY = "dedicate/tiny-chat"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def key_for(app: App, owner: str) -> str:
    resp = app.client.post("/v1/keys", json={"owner": owner})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


def ok(app: App, path: str, key: str | None = None, **params: Any) -> Any:
    resp = app.client.get(path, params=params, headers=app.as_(key) if key else {})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_whoami_names_the_owners_project_and_the_installation_as_organization(app: App) -> None:
    erin = key_for(app, "erin")
    who = ok(app, "/v3/whoami", erin)
    assert who["type"] == "project_api_key"
    assert who["project"] == {"id": "proj_erin", "name": "erin", "slug": "erin"}
    assert who["organization"] == {"id": "org_dedicate", "name": "dedicate"}


def test_projects_lists_the_callers_project_and_for_an_admin_every_owner_in_pages(app: App) -> None:
    erin = key_for(app, "erin")
    key_for(app, "bob")
    mine = ok(app, "/v1/projects", erin)
    assert mine["data"] == [{"id": "proj_erin", "name": "erin", "slug": "erin",
                             "organization_id": "org_dedicate", "organization_name": "dedicate"}]
    assert mine["next_cursor"] is None

    first = ok(app, "/v1/projects", limit=2)
    assert [p["slug"] for p in first["data"]] == ["admin", "bob"] and first["next_cursor"] == "proj_bob"
    rest = ok(app, "/v1/projects", limit=2, after=first["next_cursor"])
    assert [p["slug"] for p in rest["data"]] == ["erin"] and rest["next_cursor"] is None


def test_projects_refuses_a_cursor_that_is_not_a_project_and_a_limit_out_of_range(app: App) -> None:
    for params in ({"after": "bob"}, {"limit": 0}, {"limit": 1001}):
        resp = app.client.get("/v1/projects", params=params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["error"]["param"] in ("after", "limit")


def test_an_exact_name_search_finds_that_model_alone_and_text_finds_every_match(app: App) -> None:
    exact = ok(app, "/v2/supported-models", search=TINY)["data"]
    assert [m["name"] for m in exact] == [TINY]
    assert exact[0]["id"] == model_id(TINY) and exact[0]["id"].startswith("ml_")
    loose = {m["name"] for m in ok(app, "/v2/supported-models", search="instruct")["data"]}
    assert LLAMA in loose and TINY not in loose


def test_profiles_are_the_shapes_a_model_fits_and_runs_on_here(app: App) -> None:
    (tiny,) = ok(app, "/v2/supported-models", search=TINY)["data"]
    # the CPU slot (transformers) and the declared H100 node (synthetic, which runs the demo model too)
    assert [(p["gpuCount"], p["gpuType"], p["hardware"]) for p in tiny["deploymentProfiles"]] == \
        [(1, "cpu", "1x_cpu")] + [(n, "nvidia-h100-80gb", f"{n}x_nvidia_h100_80gb_sxm") for n in (1, 2, 4, 8)]
    profile = tiny["deploymentProfiles"][0]
    assert profile["modelName"] == TINY
    assert profile["model"] == f"projects/{CATALOG_PROJECT}/models/{tiny['id']}"
    assert profile["config"] == f"projects/{CATALOG_PROJECT}/configs/{profile['certifiedConfigRevisionId']}"
    assert tiny["contextLength"] == "2048"  # int64 as a string

    (llama,) = ok(app, "/v2/supported-models", search=LLAMA)["data"]
    # only the declared H100 node runs the synthetic engine: no A100 or CPU profile for Llama
    assert {p["hardware"] for p in llama["deploymentProfiles"]} == \
        {f"{n}x_nvidia_h100_80gb_sxm" for n in (1, 2, 4, 8)}


def test_the_filters_match_what_dedicate_serves_and_refuse_unknown_values(app: App) -> None:
    assert ok(app, "/v2/supported-models", product="PRODUCT_DEDICATED", modality="MODALITY_TEXT")["data"]
    assert ok(app, "/v2/supported-models", product="PRODUCT_SERVERLESS")["data"] == []
    assert ok(app, "/v2/supported-models", modality="MODALITY_IMAGE")["data"] == []
    resp = app.client.get("/v2/supported-models", params={"product": "dedicated"})
    assert resp.status_code == 400 and "PRODUCT_DEDICATED" in resp.json()["error"]["message"]


def test_supported_models_page_by_cursor_without_loss_or_repeat(app: App) -> None:
    every = [m["id"] for m in ok(app, "/v2/supported-models")["data"]]
    seen, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        got = ok(app, "/v2/supported-models", **params)
        seen += [m["id"] for m in got["data"]]
        after = got["next_cursor"]
        if after is None:
            break
    assert seen == every and len(set(seen)) == len(seen) >= 3
    assert app.client.get("/v2/supported-models", params={"after": "ml_nope"}).status_code == 400


def test_configs_of_a_model_carry_the_selectors_the_cli_builds_a_hardware_name_from(app: App) -> None:
    erin = key_for(app, "erin")
    llama = model_id(LLAMA)
    configs = ok(app, "/v2/projects/proj_erin/configs", erin, referenceModelId=llama)["data"]
    assert len(configs) == 4 and all(c["referenceModelId"] == llama for c in configs)
    names = set()
    for c in configs:
        sel = {s["key"]: s["value"] for s in c["selectors"]}
        names.add(f"{sel['accelerator_count']}x{sel['accelerator_type']}")
        assert sel["engine"] == "synthetic"
        # the public config reads the same under the caller's project and under the catalog's
        assert ok(app, f"/v2/projects/{CATALOG_PROJECT}/configs/{c['id']}", erin) == c
        assert ok(app, f"/v2/projects/proj_erin/configs/{c['id']}", erin) == c
    types = {t["name"]: t for t in ok(app, "/v2/public/inference-instance-types", erin)["data"]}
    assert names <= set(types), "each config's hardware name is an instance type's name"


def test_instance_types_price_per_hour_and_headroom_from_the_free_slots(app: App) -> None:
    types = {t["id"]: t for t in ok(app, "/v2/public/inference-instance-types")["data"]}
    h1, h8, cpu = types["1x_nvidia_h100_80gb_sxm"], types["8x_nvidia_h100_80gb_sxm"], types["1x_cpu"]
    assert h1["priceCentsPerHour"] == 336 and isinstance(h1["priceCentsPerHour"], int)  # 5.60 ¢/min × 60
    assert h1["name"] == instance_name(app.parts.settings.catalog.hardware["1x_nvidia_h100_80gb_sxm"])
    assert h1["regions"] == [{"name": "local", "headroom": {"relation": "RELATION_EQ", "value": 8}},
                             {"name": "rack-2", "headroom": {"relation": "RELATION_EQ", "value": 0}}]
    assert h8["regions"][0]["headroom"]["value"] == 1
    assert cpu["regions"][0]["headroom"]["value"] == 4
    assert types["1x_nvidia_a100_80gb_sxm"]["regions"][0]["headroom"]["value"] == 0  # no A100 node
    assert ok(app, "/v2/public/inference-instance-types/1x_cpu") == cpu
    assert app.client.get("/v2/public/inference-instance-types/9x_gpu").status_code == 404


def test_headroom_shrinks_as_replicas_take_slots(app: App) -> None:
    body = {"model": LLAMA, "hardware": "2x_nvidia_h100_80gb_sxm",
            "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    made = app.client.post("/v1/endpoints", json=body)
    assert made.status_code == 200, made.text
    # A replica holding two of node-a's slots, as a pass would place it (no process is started here).
    facts = ReplicaFacts(T0, None, None, None, 0, None, None, None)
    app.parts.store.insert_replica(Replica(
        id="r-1", endpoint_id=made.json()["id"], engine="synthetic", node="node-a", slots=(0, 1), token="t",
        address=None, pid=None, process_started=None, log_path=None, created_at=T0, facts=facts,
        stop_reason=None, version=1))
    types = {t["id"]: t for t in ok(app, "/v2/public/inference-instance-types")["data"]}
    assert types["1x_nvidia_h100_80gb_sxm"]["regions"][0]["headroom"]["value"] == 6
    assert types["8x_nvidia_h100_80gb_sxm"]["regions"][0]["headroom"]["value"] == 0


def test_catalog_models_read_under_any_project_the_caller_may_read(app: App) -> None:
    erin = key_for(app, "erin")
    mid = model_id(TINY)
    for project in ("proj_erin", CATALOG_PROJECT):
        model = ok(app, f"/v2/projects/{project}/models/{mid}", erin)
        assert model["name"] == TINY and model["projectId"] == CATALOG_PROJECT
        assert model["weights"]["type"] == "WEIGHTS_TYPE_DEFAULT" and model["visibility"] == "VISIBILITY_INTERNAL"
    assert ok(app, "/v2/projects/proj_erin/models", erin)["data"] == []  # erin registered none
    assert mid in {m["id"] for m in ok(app, f"/v2/projects/{CATALOG_PROJECT}/models", erin)["data"]}


def test_another_owners_project_answers_as_not_found(app: App) -> None:
    erin = key_for(app, "erin")
    key_for(app, "bob")
    for path in ("/v2/projects/proj_bob/configs", "/v2/projects/bob/configs", "/v2/projects/proj_bob/models"):
        resp = app.client.get(path, headers=app.as_(erin))
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["error"]["code"] == "project_not_found"
    assert app.client.get("/v2/projects/proj_bob/models").status_code == 200  # an admin reads every project


def test_unknown_models_and_configs_answer_not_found_with_where_to_look(app: App) -> None:
    for path, code in (("/v2/supported-models/ml_nope", "model_not_found"),
                       (f"/v2/projects/{CATALOG_PROJECT}/models/ml_nope", "model_not_found"),
                       (f"/v2/projects/{CATALOG_PROJECT}/configs/cr_nope", "config_not_found"),
                       (f"/v2/projects/{CATALOG_PROJECT}/configs/nope", "config_not_found")):
        resp = app.client.get(path)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["error"]["code"] == code
