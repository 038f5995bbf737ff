"""v2 endpoints and deployments in process: the same objects as v1's, etags, masks, and v2's rules."""

from __future__ import annotations

from typing import Any

import pytest

from dedicate.domain.offerings import CATALOG_PROJECT, config_id, model_id
from tests.api.conftest import App

TINY = "dedicate/tiny-chat"
BASE = "/v2/projects/proj_admin/endpoints"


def bounds(obj: dict[str, Any]) -> tuple[int, int]:
    """A deployment's (minReplicas, maxReplicas)."""
    return obj["autoscaling"]["minReplicas"], obj["autoscaling"]["maxReplicas"]


def cpu_config(app: App) -> str:
    cat = app.parts.settings.catalog
    return f"projects/{CATALOG_PROJECT}/configs/{config_id(cat.models[TINY], cat.hardware['1x_cpu'])}"


def deployment_body(app: App, name: str = "blue", lo: int = 1, hi: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "autoscaling": {"minReplicas": lo, "maxReplicas": hi},
            "model": f"projects/{CATALOG_PROJECT}/models/{model_id(TINY)}", "config": cpu_config(app), **extra}


def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def new_endpoint(app: App, name: str = "chat") -> dict[str, Any]:
    return ok(app.client.post(BASE, json={"name": name}))  # type: ignore[no-any-return]


def deploy(app: App, ep: dict[str, Any], name: str = "blue", **kw: Any) -> dict[str, Any]:
    return ok(app.client.post(f"{BASE}/{ep['id']}/deployments", json=deployment_body(app, name, **kw)))  # type: ignore[no-any-return]


def test_a_v1_endpoint_is_a_v2_endpoint_with_one_deployment_of_the_same_name(app: App) -> None:
    v1 = ok(app.client.post("/v1/endpoints", json={"model": TINY, "hardware": "1x_cpu",
                                                   "autoscaling": {"min_replicas": 1, "max_replicas": 2}}))
    uid = v1["id"].removeprefix("endpoint-")
    ep = ok(app.client.get(f"{BASE}/ep_{uid}"))
    assert ep["name"] == v1["name"] and ep["projectId"] == "proj_admin"
    assert ep["visibility"] == "VISIBILITY_PRIVATE" and ep["endpointType"] == "ENDPOINT_TYPE_DEDICATED"
    (dep,) = ep["deployments"]
    assert dep["id"] == f"dep_{uid}" and dep["name"] == f"{v1['name']}/default"
    assert dep["modelId"] == model_id(TINY) and bounds(dep) == (1, 2)
    assert dep["state"] == "DEPLOYMENT_STATE_PROVISIONING" and dep["hardware"] == "1xcpu"
    assert ep["trafficSplit"] == [{"deploymentId": f"dep_{uid}", "weight": 1.0}]
    full = ok(app.client.get(f"{BASE}/ep_{uid}/deployments/dep_{uid}"))
    assert full["legacyId"] == v1["id"] and full["status"]["state"] == "DEPLOYMENT_STATE_PROVISIONING"
    assert full["config"] == cpu_config(app) and full["endpointId"] == f"ep_{uid}"
    bare = v1["name"].partition("/")[2]
    assert ok(app.client.get(f"{BASE}/{bare}"))["id"] == f"ep_{uid}", "by its bare name too"

    assert ok(app.client.delete(f"/v1/endpoints/{v1['id']}"), 204) is None
    assert app.client.get(f"{BASE}/ep_{uid}").status_code == 404, "a v1 delete takes its route with it"


def test_a_name_is_taken_once_per_project_with_a_409_the_sdk_does_not_retry(app: App) -> None:
    first = new_endpoint(app)
    assert first["name"] == "admin/chat" and first["id"].startswith("ep_") and first["trafficSplit"] == []
    again = app.client.post(BASE, json={"name": "admin/chat"})
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"
    assert "already exists" in again.json()["error"]["message"]
    found = ok(app.client.get(BASE, params={"filter": 'name="chat"'}))["data"]
    assert [e["id"] for e in found] == [first["id"]]


def test_endpoints_page_by_cursor_without_loss_or_repeat_in_either_order(app: App) -> None:
    made = []
    for i in range(7):
        made.append(new_endpoint(app, f"e{i}")["id"])
        app.clock.advance(1)
    for order, expect in (("created_at", made), ("created_at desc", made[::-1])):
        seen, after = [], None
        while True:
            params: dict[str, Any] = {"limit": 3, "orderBy": order, **({"after": after} if after else {})}
            page = ok(app.client.get(BASE, params=params))
            seen += [e["id"] for e in page["data"]]
            after = page["next_cursor"]
            if after is None:
                break
        assert seen == expect, order
    contains = ok(app.client.get(BASE, params={"filter": 'name:"e*"'}))["data"]
    assert len(contains) == 7


def test_a_deployment_made_on_an_unrouted_endpoint_takes_its_traffic_and_leaves_its_etag(app: App) -> None:
    ep = new_endpoint(app)
    dep = deploy(app, ep)
    assert dep["id"].startswith("dep_") and dep["name"] == "admin/chat/blue" and dep["endpointId"] == ep["id"]
    assert bounds(dep) == (1, 1) and dep["pricing"]["centsPerHourAtMin"]
    after = ok(app.client.get(f"{BASE}/{ep['id']}"))
    assert after["etag"] == ep["etag"], "a child change never changes the endpoint's etag"
    assert after["trafficSplit"] == [{"deploymentId": dep["id"], "weight": 1.0}]
    assert [d["id"] for d in after["deployments"]] == [dep["id"]]
    # v1 lists the deployment under its own name
    names = {e["name"] for e in ok(app.client.get("/v1/endpoints"))["data"]}
    assert "admin/chat/blue" in names
    green = deploy(app, ep, "green")
    assert ok(app.client.get(f"{BASE}/{ep['id']}"))["trafficSplit"] == after["trafficSplit"], "only the first"
    assert app.client.post(f"{BASE}/{ep['id']}/deployments", json=deployment_body(app, "green")).status_code == 409
    assert green["name"] == "admin/chat/green"


def test_the_split_changes_with_the_current_etag_only(app: App) -> None:
    ep = new_endpoint(app)
    blue, green = deploy(app, ep), deploy(app, ep, "green")
    split = [{"deploymentId": blue["id"], "weight": 3}, {"deploymentId": green["id"], "weight": 1}]
    changed = ok(app.client.patch(f"{BASE}/{ep['id']}", params={"updateMask": "trafficSplit"},
                                  json={"etag": ep["etag"], "trafficSplit": split}))
    assert [(s["deploymentId"], s["weight"]) for s in changed["trafficSplit"]] == [(blue["id"], 3), (green["id"], 1)]
    assert changed["etag"] != ep["etag"]
    stale = app.client.patch(f"{BASE}/{ep['id']}", params={"updateMask": "trafficSplit"},
                             json={"etag": ep["etag"], "trafficSplit": []})
    assert stale.status_code == 409 and stale.headers["x-should-retry"] == "false"
    assert ok(app.client.get(f"{BASE}/{ep['id']}"))["trafficSplit"] == changed["trafficSplit"], "nothing changed"
    for bad, param in (([{"deploymentId": "dep_nope", "weight": 1}], "trafficSplit[0].deploymentId"),
                       ([{"deploymentId": blue["id"], "weight": -1}], "trafficSplit[0].weight"),
                       ([{"deploymentId": blue["id"], "weight": 1}, {"deploymentId": blue["id"], "weight": 1}],
                        "trafficSplit[1].deploymentId")):
        resp = app.client.patch(f"{BASE}/{ep['id']}", json={"trafficSplit": bad})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
    unrouted = ok(app.client.patch(f"{BASE}/{ep['id']}", json={"trafficSplit": []}))  # no etag: last write wins
    assert unrouted["trafficSplit"] == []


def test_autoscaling_patches_merge_and_zero_over_zero_stops_a_deployment(app: App) -> None:
    ep = new_endpoint(app)
    dep = deploy(app, ep, lo=1, hi=2)
    path = f"{BASE}/{ep['id']}/deployments/{dep['id']}"
    wider = ok(app.client.patch(path, params={"updateMask": "autoscaling"}, json={"autoscaling": {"maxReplicas": 4}}))
    assert bounds(wider) == (1, 4), "the omitted bound is kept"
    timed = ok(app.client.patch(path, params={"updateMask": "inactiveTimeout"}, json={"inactiveTimeout": 60}))
    assert timed["inactiveTimeout"] == 60 and timed["autoscaling"]["maxReplicas"] == 4
    running = app.client.delete(path)
    assert running.status_code == 409 and "0/0" in running.json()["error"]["message"]
    stopped = ok(app.client.patch(path, params={"updateMask": "autoscaling"},
                                  json={"autoscaling": {"minReplicas": 0, "maxReplicas": 0}}))
    assert bounds(stopped) == (0, 0)
    assert stopped["status"]["state"] in ("DEPLOYMENT_STATE_STOPPING", "DEPLOYMENT_STATE_STOPPED")
    busy = app.client.delete(f"{BASE}/{ep['id']}")
    assert busy.status_code == 409 and dep["id"] in busy.json()["error"]["message"]
    assert ok(app.client.delete(path), 204) is None, "deleted at once once 0/0, even while stopping"
    left = ok(app.client.get(f"{BASE}/{ep['id']}"))
    assert left["deployments"] == [] and left["trafficSplit"] == [] and left["etag"] == ep["etag"]
    assert ok(app.client.delete(f"{BASE}/{ep['id']}"), 204) is None
    assert app.client.get(f"{BASE}/{ep['id']}").status_code == 404
    assert new_endpoint(app)["name"] == "admin/chat", "the name is free again"


def test_a_stopped_deployment_starts_again_with_bounds(app: App) -> None:
    ep = new_endpoint(app)
    dep = deploy(app, ep, lo=0, hi=0)
    assert bounds(dep) == (0, 0)
    assert dep["status"]["state"] == "DEPLOYMENT_STATE_STOPPED"
    path = f"{BASE}/{ep['id']}/deployments/{dep['id']}"
    lone_min = app.client.patch(path, json={"autoscaling": {"minReplicas": 1}})
    assert lone_min.status_code == 400, "1 over the stopped 0 is min > max"
    started = ok(app.client.patch(path, json={"autoscaling": {"minReplicas": 1, "maxReplicas": 2}}))
    assert bounds(started) == (1, 2)
    assert started["status"]["state"] == "DEPLOYMENT_STATE_PROVISIONING"


def test_validate_only_prices_a_deployment_and_makes_nothing(app: App) -> None:
    ep = new_endpoint(app)
    dry = ok(app.client.post(f"{BASE}/{ep['id']}/deployments", params={"validateOnly": "true"},
                             json=deployment_body(app, lo=1, hi=3)))
    assert float(dry["pricing"]["centsPerHourAtMax"]) == 3 * float(dry["pricing"]["centsPerHourAtMin"]) > 0
    assert ok(app.client.get(f"{BASE}/{ep['id']}"))["deployments"] == []


@pytest.mark.parametrize(("change", "param"), [
    ({"surprise": 1}, "surprise"),
    ({"inactiveTimeout": 10}, "inactiveTimeout"),
    ({"inactiveTimeout": 2000}, "inactiveTimeout"),
    ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "autoscaling"),
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 1, "scaleUpWindow": "soon"}}, "autoscaling.scaleUpWindow"),
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 1, "scaleDownWindow": "2h"}}, "autoscaling.scaleDownWindow"),
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 1, "scalingMetrics": [
        {"name": "gpu_utilization", "type": "METRIC_TARGET_TYPE_UTILIZATION", "target": 80}]}},
     "autoscaling.scalingMetrics[0].name"),
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 1, "scalingMetrics": [
        {"name": "ttft", "type": "METRIC_TARGET_TYPE_VALUE", "target": 500, "percentile": "p42"}]}},
     "autoscaling.scalingMetrics[0].percentile"),
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 1, "scaleUp": {
        "policies": [{"periodSeconds": 0, "type": "SCALING_POLICY_TYPE_PODS", "value": 1}]}}},
     "autoscaling.scaleUp.policies[0].periodSeconds"),
    ({"config": "configs/cr_x"}, "config"),
    ({"config": f"projects/{CATALOG_PROJECT}/configs/cr_nope"}, None),
    ({"model": f"projects/{CATALOG_PROJECT}/models/ml_other"}, "config"),
    ({"name": "bad name"}, "name"),
    ({"maxConcurrentRequestsPerReplica": "-1"}, "maxConcurrentRequestsPerReplica"),
    ({"maxConcurrentRequestsPerReplica": "lots"}, "maxConcurrentRequestsPerReplica"),
    ({"placement": {"inline": {"regions": ["mars"]}}}, "placement.inline.regions"),
])
def test_a_bad_deployment_is_refused_with_what_to_do_and_nothing_is_stored(app: App, change: dict[str, Any],
                                                                          param: str | None) -> None:
    ep = new_endpoint(app)
    resp = app.client.post(f"{BASE}/{ep['id']}/deployments", json={**deployment_body(app), **change})
    assert 400 <= resp.status_code < 500, resp.text
    err = resp.json()["error"]
    assert err["message"]
    if param is not None:
        assert param in (err["param"] or ""), err
    assert ok(app.client.get(f"{BASE}/{ep['id']}"))["deployments"] == []
    assert all(e["name"] != "admin/chat/blue" for e in ok(app.client.get("/v1/endpoints"))["data"])


def test_bad_endpoint_input_answers_400_and_other_projects_404(app: App) -> None:
    for body, param in (({}, "name"), ({"name": "Bad Name"}, "name"), ({"name": "bob/chat"}, "name"),
                        ({"name": "chat", "visibility": "VISIBILITY_SECRET"}, "visibility"),
                        ({"name": "chat", "extra": True}, "extra")):
        resp = app.client.post(BASE, json=body)
        assert resp.status_code == 400 and param in (resp.json()["error"]["param"] or ""), (body, resp.text)
    assert app.client.post("/v2/projects/proj_nobody/endpoints", json={"name": "x"}).status_code == 200, \
        "an admin acts in any project"
    key = ok(app.client.post("/v1/keys", json={"owner": "erin"}))["key"]
    resp = app.client.get(BASE, headers=app.as_(key))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "project_not_found"
    resp = app.client.get(BASE, params={"filter": "state=READY"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "filter"
    resp = app.client.patch(f"{BASE}/ep_nope", params={"updateMask": "colour"}, json={})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "updateMask"


def test_the_experiment_collections_exist_and_are_empty(app: App) -> None:
    ep = new_endpoint(app)
    dep = deploy(app, ep)
    for tail in ("abExperiments", "shadowExperiments?includeTargets=true", "rollouts",
                 f"deployments/{dep['id']}/adapters"):
        assert ok(app.client.get(f"{BASE}/{ep['id']}/{tail}")) == {"object": "list", "data": [], "next_cursor": None}
    assert app.client.get(f"{BASE}/ep_nope/abExperiments").status_code == 404


def test_events_come_newest_first_filtered_and_paged_ending_with_the_endpoints_creation(app: App) -> None:
    ep = new_endpoint(app)
    app.clock.advance(1)
    blue = deploy(app, ep, lo=1, hi=2)
    app.clock.advance(1)
    green = deploy(app, ep, "green")
    app.clock.advance(1)
    path = f"{BASE}/{ep['id']}/deployments/{blue['id']}"
    ok(app.client.patch(path, json={"autoscaling": {"maxReplicas": 3}}))
    ok(app.client.post(f"/v1/endpoints/{blue['legacyId']}/scale", json={"replicas": 2}))
    events = ok(app.client.get(f"{BASE}/{ep['id']}/events", params={"limit": 100}))["data"]
    assert events[-1]["type"] == "endpoint.created" and events[-1]["sourceKind"] == "SOURCE_KIND_ENDPOINT"
    times = [e["createdAt"] for e in events]
    assert times == sorted(times, reverse=True), "newest first"
    scaled = [e for e in events if e["type"] == "deployment.scaled"]
    assert scaled and scaled[0]["deploymentId"] == blue["id"] and \
        (scaled[0]["oldReplicas"], scaled[0]["newReplicas"]) == (1, 2)
    assert {e["type"] for e in events} >= {"deployment.created", "deployment.updated", "endpoint.created"}
    assert all(e["name"] == "admin/chat/blue" for e in events if e.get("deploymentId") == blue["id"])

    only_green = ok(app.client.get(f"{BASE}/{ep['id']}/events", params={"deploymentIds": green["id"]}))["data"]
    assert only_green and {e["deploymentId"] for e in only_green} == {green["id"]}
    typed = ok(app.client.get(f"{BASE}/{ep['id']}/events", params={"types": "deployment.created,endpoint.created"}))
    assert [e["type"] for e in typed["data"]] == ["deployment.created", "deployment.created", "endpoint.created"]
    assert ok(app.client.get(f"{BASE}/{ep['id']}/events", params={"minLevel": "LEVEL_ERROR"}))["data"] == []

    seen, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = ok(app.client.get(f"{BASE}/{ep['id']}/events", params=params))
        seen += [e["id"] for e in page["data"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert seen == [e["id"] for e in events], "pages give the same events, none twice"
    for bad in ({"minLevel": "loud"}, {"since": "yesterday"}, {"deploymentIds": "endpoint-1"}, {"after": "x"},
                {"sourceKinds": "SOURCE_KIND_POD"}):
        assert app.client.get(f"{BASE}/{ep['id']}/events", params=bad).status_code == 400, bad


def test_scaling_rules_are_kept_shown_in_the_v2_form_and_merged_on_update(app: App) -> None:
    ep = new_endpoint(app)
    rules = {"scaleUpWindow": "30s", "scaleDownWindow": "5m", "scaleToZeroWindow": "1h",
             "scalingMetrics": [{"name": "inflight_requests", "type": "METRIC_TARGET_TYPE_AVERAGE_VALUE",
                                 "target": 4}],
             "scaleUp": {"policies": [{"periodSeconds": 60, "type": "SCALING_POLICY_TYPE_PODS", "value": 2}]}}
    dep = ok(app.client.post(f"{BASE}/{ep['id']}/deployments",
                             json=deployment_body(app, lo=0, hi=4, autoscaling={"minReplicas": 0, "maxReplicas": 4,
                                                                                **rules})))
    auto = dep["autoscaling"]
    assert (auto["scaleUpWindow"], auto["scaleDownWindow"], auto["scaleToZeroWindow"]) == ("30s", "300s", "3600s")
    assert auto["scalingMetrics"] == [{"name": "inflight_requests", "type": "METRIC_TARGET_TYPE_AVERAGE_VALUE",
                                       "target": 4.0}]
    assert auto["scaleUp"] == {"policies": [{"periodSeconds": 60, "type": "SCALING_POLICY_TYPE_PODS", "value": 2}],
                               "selectPolicy": "SCALING_POLICY_SELECT_MAX"}
    v1 = ok(app.client.get(f"/v1/endpoints/{dep['legacyId']}"))
    assert v1["autoscaler"]["target_concurrency"]["value"] == 4.0, "the metric's target is the target concurrency"
    path = f"{BASE}/{ep['id']}/deployments/{dep['id']}"
    changed = ok(app.client.patch(path, params={"updateMask": "autoscaling"},
                                  json={"autoscaling": {"scaleDownWindow": "600s"}}))
    assert changed["autoscaling"]["scaleDownWindow"] == "600s" and changed["autoscaling"]["scaleUpWindow"] == "30s"
    assert bounds(changed) == (0, 4), "the bounds not given are kept"
    plain = deploy(app, ep, "plain")
    assert plain["autoscaling"]["scaleDownWindow"] == "300s" and "scaleUpWindow" not in plain["autoscaling"]


def test_analytics_sum_the_gateways_minutes_per_deployment_with_percentiles_and_a_series(app: App) -> None:
    from datetime import timedelta

    from dedicate.domain import latency
    from dedicate.domain.records import DeploymentMinute

    ep = new_endpoint(app)
    blue, green = deploy(app, ep), deploy(app, ep, "green")
    now = app.clock.now().replace(second=0, microsecond=0)

    def minute(dep: dict[str, Any], at: Any, ok_n: int, bad_n: int, ms: float) -> DeploymentMinute:
        h = latency.empty()
        for _ in range(ok_n + bad_n):
            latency.add(h, ms)
        return DeploymentMinute(dep["legacyId"], at, ok_n + bad_n, bad_n, 10 * ok_n, 4 * ok_n,
                                {"200": ok_n, **({"503": bad_n} if bad_n else {})}, list(h), list(h))

    app.parts.store.write_minutes("gw-1", [minute(blue, now - timedelta(minutes=2), 30, 0, 40),
                                           minute(blue, now - timedelta(minutes=1), 10, 2, 40),
                                           minute(green, now - timedelta(minutes=1), 8, 0, 900)], app.clock.now())
    app.clock.advance(60)
    out = ok(app.client.get(f"{BASE}/{ep['id']}/analytics", params={"granularity": "1m", "includeTimeSeries": "true",
                                                                      "startTime": (now - timedelta(minutes=5))
                                                                      .isoformat()}))
    req = out["metrics"]["requestMetrics"]
    assert (req["totalRequests"], req["failedRequests"], req["successfulRequests"]) == ("50", "2", "48")
    assert req["requestsByStatusCode"] == {"200": "48", "503": "2"}
    assert out["metrics"]["tokenMetrics"]["totalInputTokens"] == "480"
    assert out["metrics"]["errorMetrics"]["errorsByType"] == {"503": "2"}
    lat = out["metrics"]["latencyMetrics"]
    assert 30 <= lat["latencyP50Ms"] <= 50 and 800 <= lat["latencyP99Ms"] <= 1200
    per = {d["deploymentId"]: d for d in out["deploymentAnalytics"]}
    assert per[blue["id"]]["metrics"]["requestMetrics"]["totalRequests"] == "42"
    assert per[green["id"]]["metrics"]["requestMetrics"]["totalRequests"] == "8"
    assert per[blue["id"]]["metrics"]["replicas"] == {"readyReplicas": 0, "desiredReplicas": 1}
    assert [p["values"]["requests"] for p in out["timeSeries"]] == [30, 20]
    assert [p["values"]["requests"] for p in per[blue["id"]]["timeSeries"]] == [30, 12]
    one = ok(app.client.get(f"{BASE}/{ep['id']}/analytics", params={"deploymentId": green["id"]}))
    assert one["metrics"]["requestMetrics"]["totalRequests"] == "8" and one["timeSeries"] == []
    for bad in ({"granularity": "5m"}, {"startTime": "2026-11-01T00:00:00Z"}, {"deploymentId": "dep_nope"},
                {"startTime": app.clock.now().isoformat(), "endTime": (now - timedelta(hours=1)).isoformat()}):
        assert app.client.get(f"{BASE}/{ep['id']}/analytics", params=bad).status_code == 400, bad


def test_the_organization_lists_every_projects_shared_endpoints_only(app: App) -> None:
    erin = ok(app.client.post("/v1/keys", json={"owner": "erin"}))["key"]
    shared = ok(app.client.post("/v2/projects/proj_erin/endpoints", json={"name": "team",
                                                                        "visibility": "VISIBILITY_INTERNAL"},
                                headers=app.as_(erin)))
    ok(app.client.post("/v2/projects/proj_erin/endpoints", json={"name": "mine"}, headers=app.as_(erin)))
    new_endpoint(app, "admins")
    bob = ok(app.client.post("/v1/keys", json={"owner": "bob"}))["key"]
    listed = ok(app.client.get("/v2/organizations/org_dedicate/endpoints", headers=app.as_(bob)))["data"]
    assert [e["id"] for e in listed] == [shared["id"]] and listed[0]["name"] == "erin/team"
    exact = ok(app.client.get("/v2/organizations/org_dedicate/endpoints", params={"filter": 'name="erin/team"'},
                              headers=app.as_(bob)))["data"]
    assert [e["id"] for e in exact] == [shared["id"]]
    resp = app.client.get("/v2/organizations/org_other/endpoints", headers=app.as_(bob))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "organization_not_found"


def test_v1_models_lists_a_v2_endpoint_by_the_name_requests_send(app: App) -> None:
    ep = new_endpoint(app)
    deploy(app, ep, "blue")
    names = {m["id"] for m in ok(app.client.get("/v1/models"))["data"]}
    assert {"admin/chat", "admin/chat/blue"} <= names
    new_endpoint(app, "empty")
    assert "admin/empty" not in {m["id"] for m in ok(app.client.get("/v1/models"))["data"]}, \
        "a name that routes nowhere is not a model to call"


def test_a_deployments_etag_moves_with_its_settings_not_with_the_reconcilers_writes(app: App) -> None:
    ep = new_endpoint(app)
    dep = deploy(app, ep, lo=0, hi=0)
    path = f"{BASE}/{ep['id']}/deployments/{dep['id']}"
    store = app.parts.store
    for n in range(3):  # what the reconciler and the autoscaler write: status, queue, the policy's state
        rec = store.get_endpoint(dep["legacyId"])
        assert rec is not None and store.update_endpoint(rec, app.clock.now(), None, status_message=f"pass {n}",
                                                         autoscale_state=f'{{"v":1,"n":{n}}}')
    rec = store.get_endpoint(dep["legacyId"])
    assert rec is not None and rec.version >= 4, "the record moved"
    after = ok(app.client.get(path))
    assert after["etag"] == dep["etag"], "the record moved, not the deployment's settings"
    changed = ok(app.client.patch(path, params={"updateMask": "inactiveTimeout"},
                                  json={"etag": dep["etag"], "inactiveTimeout": 60}))
    assert changed["etag"] != dep["etag"]
    stale = app.client.patch(path, params={"updateMask": "inactiveTimeout"},
                             json={"etag": dep["etag"], "inactiveTimeout": 90})
    assert stale.status_code == 409 and stale.headers["x-should-retry"] == "false"
    assert app.client.delete(path, params={"etag": dep["etag"]}).status_code == 409
    assert app.client.delete(path, params={"etag": changed["etag"]}).status_code == 204


def test_a_per_replica_cap_is_kept_shown_as_a_string_and_changed_without_a_restart(app: App) -> None:
    ep = new_endpoint(app)
    dep = ok(app.client.post(f"{BASE}/{ep['id']}/deployments",
                             json=deployment_body(app, maxConcurrentRequestsPerReplica="4")))
    assert dep["maxConcurrentRequestsPerReplica"] == "4"
    assert app.parts.store.get_endpoint(dep["legacyId"]).max_concurrency == 4  # type: ignore[union-attr]
    path = f"{BASE}/{ep['id']}/deployments/{dep['id']}"
    changed = ok(app.client.patch(path, params={"updateMask": "maxConcurrentRequestsPerReplica"},
                                  json={"maxConcurrentRequestsPerReplica": "0"}))
    assert changed["maxConcurrentRequestsPerReplica"] == "0" and changed["etag"] != dep["etag"]
    assert app.parts.store.get_endpoint(dep["legacyId"]).max_concurrency is None  # type: ignore[union-attr]
