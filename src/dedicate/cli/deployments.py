"""`dedicate whoami`, `dedicate deploy` and `dedicate deployments`: endpoints with deployments (the v2 API).

An endpoint is the name requests send; its deployments are models on hardware, each with its
replicas and bounds, and its traffic split says which share of the requests each one gets.
`dedicate endpoints ...` keeps v1's view, where an endpoint holds one deployment.
"""

from __future__ import annotations

from typing import Any

import click

from dedicate.cli.common import Client, fail, json_opt, out, table


def _project(client: Client) -> str:
    project: str = client.call("GET", "/v3/whoami")["project"]["id"]
    return project


def _endpoint(client: Client, project: str, name: str, *, create: bool = False) -> dict[str, Any]:
    """The endpoint by id (``ep_…``) or name; with ``create``, made if there is none of that name."""
    base = f"/v2/projects/{project}/endpoints"
    if name.startswith("ep_"):
        found: dict[str, Any] = client.call("GET", f"{base}/{name}")
        return found
    page = client.call("GET", base, params={"filter": f'name="{name}"'})["data"]
    if page:
        first: dict[str, Any] = page[0]
        return first
    if not create:
        fail(f"no endpoint {name!r} in project {project}; list them with `dedicate deployments list`")
    made: dict[str, Any] = client.call("POST", base, json={"name": name})
    return made


def _config(client: Client, project: str, model: str, hardware: str | None) -> tuple[str, str]:
    """The (model path, config path) of ``model`` on ``hardware`` (dedicate's hardware id; default: the smallest)."""
    found = client.call("GET", "/v2/supported-models", params={"search": model})["data"]
    exact = [m for m in found if m["name"] == model]
    if not exact:
        fail(f"model {model!r} is not deployable here; see `dedicate models`")
    profiles = exact[0]["deploymentProfiles"]
    chosen = [p for p in profiles if hardware is None or p["hardware"] == hardware]
    if not chosen:
        fail(f"{model} does not run on {hardware} here; it runs on {', '.join(p['hardware'] for p in profiles)}")
    return chosen[0]["model"], chosen[0]["config"]


@click.command()
@json_opt
def whoami(as_json: bool) -> None:
    """Your key's project (what TOGETHER_PROJECT_ID takes) and organization."""
    me = Client().call("GET", "/v3/whoami")
    out(me, as_json, f"project {me['project']['id']} ({me['project']['slug']}), "
                     f"organization {me['organization']['id']}, key {me['api_key']['id']}")


@click.command()
@click.argument("model")
@click.option("--endpoint", "endpoint_name", required=True, help="the endpoint's name (made if new) or ep_ id")
@click.option("--deployment", "deployment_name", help="the deployment's name; default: from the model")
@click.option("--hardware", help="a hardware id such as 1x_cpu; default: the smallest that fits")
@click.option("--min-replicas", type=int, default=1, show_default=True)
@click.option("--max-replicas", type=int)
@click.option("--weight", type=float, help="its traffic weight; default: all the traffic of a new endpoint, "
                                           "none of one that has a split already")
@json_opt
def deploy(model: str, endpoint_name: str, deployment_name: str | None, hardware: str | None, min_replicas: int,
           max_replicas: int | None, weight: float | None, as_json: bool) -> None:
    """Deploy MODEL to an endpoint, as one more deployment of it."""
    client = Client()
    project = _project(client)
    ep = _endpoint(client, project, endpoint_name, create=True)
    model_path, config = _config(client, project, model, hardware)
    name = deployment_name or model.replace("/", "-")
    dep = client.call("POST", f"/v2/projects/{project}/endpoints/{ep['id']}/deployments", json={
        "name": name, "model": model_path, "config": config,
        "autoscaling": {"minReplicas": min_replicas, "maxReplicas": max_replicas or min_replicas}})
    if weight is not None:
        split = [s for s in ep["trafficSplit"] if s["deploymentId"] != dep["id"]]
        client.call("PATCH", f"/v2/projects/{project}/endpoints/{ep['id']}", params={"updateMask": "trafficSplit"},
                    json={"trafficSplit": [*split, {"deploymentId": dep["id"], "weight": weight}]})
    out(dep, as_json, f"deployed {model} as {dep['name']} ({dep['id']}) on {dep['dedicateHardware']}: "
                      f"{dep['status']['state'].removeprefix('DEPLOYMENT_STATE_').lower()}; requests name "
                      f"{ep['name']}")


@click.group()
def deployments() -> None:
    """Endpoints and their deployments (the v2 view)."""


@deployments.command("list")
@click.argument("endpoint", required=False)
@json_opt
def list_(endpoint: str | None, as_json: bool) -> None:
    """Your endpoints with their deployments, or one endpoint's."""
    client = Client()
    project = _project(client)
    if endpoint is not None:
        eps = [_endpoint(client, project, endpoint)]
    else:
        eps, after = [], None
        while True:
            page = client.call("GET", f"/v2/projects/{project}/endpoints",
                               params={"limit": 500, **({"after": after} if after else {})})
            eps += page["data"]
            after = page["next_cursor"]
            if not after:
                break
    rows = []
    for ep in eps:
        weights = {s["deploymentId"]: s["weight"] for s in ep["trafficSplit"]}
        if not ep["deployments"]:
            rows.append([ep["name"], "-", "-", "-", "-", "-"])
        for d in ep["deployments"]:
            share = d.get("estimatedEffectiveTrafficShare")
            rows.append([ep["name"], d["name"].rsplit("/", 1)[-1], d["state"].removeprefix("DEPLOYMENT_STATE_"),
                         f"{d['readyReplicas']}/{d['desiredReplicas']}", f"{weights.get(d['id'], 0):g}",
                         "-" if share is None else f"{share:.0%}"])
    out(eps, as_json, table(rows, ["ENDPOINT", "DEPLOYMENT", "STATE", "READY", "WEIGHT", "SHARE"]))


@deployments.command("split")
@click.argument("endpoint")
@click.argument("weights", nargs=-1, required=True)
@json_opt
def split(endpoint: str, weights: tuple[str, ...], as_json: bool) -> None:
    """Set the traffic split: DEPLOYMENT=WEIGHT ... (deployments by name or dep_ id; 0 drains one)."""
    client = Client()
    project = _project(client)
    ep = _endpoint(client, project, endpoint)
    by_name = {d["name"].rsplit("/", 1)[-1]: d["id"] for d in ep["deployments"]}
    entries = []
    for w in weights:
        name, sep, value = w.partition("=")
        if not sep:
            fail(f"{w!r}: write DEPLOYMENT=WEIGHT, e.g. blue=3")
        try:
            entries.append({"deploymentId": by_name.get(name, name), "weight": float(value)})
        except ValueError:
            fail(f"{w!r}: the weight must be a number")
    got = client.call("PATCH", f"/v2/projects/{project}/endpoints/{ep['id']}",
                      params={"updateMask": "trafficSplit"}, json={"etag": ep["etag"], "trafficSplit": entries})
    out(got, as_json, ", ".join(f"{s['deploymentId']}={s['weight']:g}" for s in got["trafficSplit"]) or "unrouted")


@deployments.command("delete")
@click.argument("endpoint")
@click.argument("deployment")
@json_opt
def delete(endpoint: str, deployment: str, as_json: bool) -> None:
    """Stop a deployment (0/0) and delete it; the endpoint stays, with the others."""
    client = Client()
    project = _project(client)
    ep = _endpoint(client, project, endpoint)
    by_name = {d["name"].rsplit("/", 1)[-1]: d["id"] for d in ep["deployments"]}
    dep = by_name.get(deployment, deployment)
    path = f"/v2/projects/{project}/endpoints/{ep['id']}/deployments/{dep}"
    client.call("PATCH", path, params={"updateMask": "autoscaling"},
                json={"autoscaling": {"minReplicas": 0, "maxReplicas": 0}})
    client.call("DELETE", path)
    out({"deleted": dep}, as_json, f"deleted {dep}")
