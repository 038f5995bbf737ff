"""`dedicate`: run the server, and drive it (endpoints and deployments, hardware, models, keys).

The CLI talks to DEDICATE_URL with DEDICATE_API_KEY. Without them it finds the local server as
`dedicate up` does (`settings.locate`: DEDICATE_CONFIG, DEDICATE_DATA_DIR, DEDICATE_HOST,
DEDICATE_PORT, and the file's [server] table): the port the server wrote to its data directory,
and the admin key there.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import click

from dedicate.cli.backups import backup_cmd, restore_cmd
from dedicate.cli.common import Client, fail, json_opt, location, out, table
from dedicate.cli.deployments import deploy, deployments, whoami
from dedicate.settings import ConfigError, load_settings


def _describe(ep: dict[str, Any]) -> str:
    r = ep.get("replicas", {})
    p = ep.get("pricing", {})
    return "\n".join([
        f"id:         {ep['id']}",
        f"name:       {ep['name']}",
        f"model:      {ep['model']}",
        f"hardware:   {ep.get('hardware')}",
        f"state:      {ep['state']}  ({ep.get('status_message', '')})",
        f"replicas:   {r.get('ready', 0)} ready of {r.get('desired', 0)} desired, "
        f"{r.get('starting', 0)} starting, {r.get('queued', 0)} queued "
        f"(bounds {ep['autoscaling']['min_replicas']}..{ep['autoscaling']['max_replicas']})",
        f"price:      {p.get('cents_per_replica_minute')} cents per replica-minute; "
        f"${p.get('dollars_per_hour_at_min')}/h at min, ${p.get('dollars_per_hour_at_max')}/h at max",
        f"idle stop:  {ep.get('inactive_timeout') or 'never'}"
        + (" min" if ep.get("inactive_timeout") else ""),
        *_autoscaler_lines(ep),
        f"billing:    {ep.get('billing', {}).get('cost_this_month_cents', '0')} cents this month; burning "
        f"{ep.get('billing', {}).get('burn_rate_cents_per_minute', '0')} cents/min now",
    ])


def _autoscaler_lines(ep: dict[str, Any]) -> list[str]:
    a = ep.get("autoscaler") or {}
    target = a.get("target_concurrency") or {}
    lines = []
    if target:
        how = "set by you" if target.get("source") == "user" else f"default: {target.get('basis')}"
        lines.append(f"target:     {target.get('value'):g} requests in flight per replica ({how})")
    last = a.get("last_decision")
    if last:
        lines.append(f"scaled:     {last.get('at')}  {last.get('reason')}")
    return lines


def _wait(client: Client, endpoint_id: str, target: set[str], timeout: float, as_json: bool) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        ep = client.call("GET", f"/v1/endpoints/{endpoint_id}")
        r = ep.get("replicas", {})
        line = f"{ep['state']:<9} {r.get('ready', 0)}/{r.get('desired', 0)} ready  {ep.get('status_message', '')}"
        if line != last:  # progress goes to stderr, so --json output stays parseable
            click.echo(line, err=True)
            last = line
        if ep["state"] in target:
            return ep
        if ep["state"] == "ERROR":
            fail(f"endpoint {endpoint_id} is in ERROR: {ep.get('status_message')}")
        if time.monotonic() > deadline:
            fail(f"gave up waiting after {timeout:.0f} s; the endpoint is {ep['state']}")
        time.sleep(1.0)


@click.group()
def main() -> None:
    """dedicate: dedicated LLM inference endpoints on your own hardware."""


@main.command()
def up() -> None:
    """Run the server (API, gateway, reconcilers) in the foreground."""
    from dedicate.server import serve
    from dedicate.store.db import SchemaError

    try:
        serve(load_settings())
    except ConfigError as exc:
        fail(f"config: {exc}")
    except SchemaError as exc:
        fail(str(exc))


@main.group()
def endpoints() -> None:
    """Create, inspect, scale, stop, start and delete endpoints."""


@endpoints.command("create")
@click.argument("model")
@click.option("--hardware", required=True, help="hardware id, e.g. 1x_cpu (see `dedicate hardware`)")
@click.option("--min-replicas", type=int, default=1, show_default=True)
@click.option("--max-replicas", type=int, default=1, show_default=True)
@click.option("--display-name")
@click.option("--inactive-timeout", type=int, help="minutes idle before auto-stop (0 = never)")
@click.option("--target-concurrency", type=float,
              help="requests in flight per replica the autoscaler aims at (default: from the hardware and model)")
@click.option("--no-start", is_flag=True, help="create it stopped")
@click.option("--wait/--no-wait", default=False, help="wait until it is STARTED")
@click.option("--timeout", type=float, default=900.0, show_default=True)
@json_opt
def create(model: str, hardware: str, min_replicas: int, max_replicas: int, display_name: str | None,
           inactive_timeout: int | None, target_concurrency: float | None, no_start: bool, wait: bool,
           timeout: float, as_json: bool) -> None:
    """Create an endpoint for MODEL (shows the price first)."""
    client = Client()
    body: dict[str, Any] = {"model": model, "hardware": hardware,
                            "autoscaling": {"min_replicas": min_replicas, "max_replicas": max_replicas},
                            "state": "STOPPED" if no_start else "STARTED"}
    if target_concurrency is not None:
        body["autoscaling"]["target_concurrency"] = target_concurrency
    if display_name is not None:
        body["display_name"] = display_name
    if inactive_timeout is not None:
        body["inactive_timeout"] = inactive_timeout
    preview = client.call("POST", "/v1/endpoints", params={"dry_run": "true"}, json=body)
    p = preview["pricing"]
    # On stderr: --json output on stdout stays parseable.
    click.echo(f"price: {p['cents_per_replica_minute']} cents per replica-minute; "
               f"${p['dollars_per_hour_at_min']}/h at {min_replicas} replica(s), "
               f"${p['dollars_per_hour_at_max']}/h at {max_replicas}", err=True)
    ep = client.call("POST", "/v1/endpoints", json=body)
    if wait and not no_start:
        ep = _wait(client, ep["id"], {"STARTED"}, timeout, as_json)
    out(ep, as_json, _describe(ep))


@endpoints.command("list")
@click.option("--all", "all_owners", is_flag=True, help="admin: every owner's endpoints")
@json_opt
def list_(all_owners: bool, as_json: bool) -> None:
    """List your endpoints."""
    client, params = Client(), {"mine": str(not all_owners).lower(), "limit": "1000"}
    page = client.call("GET", "/v1/endpoints", params=params)
    data = page["data"]
    while page.get("has_more"):  # every page, oldest first
        page = client.call("GET", "/v1/endpoints", params={**params, "after": page["next_cursor"]})
        data += page["data"]
    rows = [[e["id"], e["name"], e["model"], e["state"], e["owner"]] for e in data]
    out(data, as_json, table(rows, ["ID", "NAME", "MODEL", "STATE", "OWNER"]))


@endpoints.command("get")
@click.argument("endpoint_id")
@json_opt
def get(endpoint_id: str, as_json: bool) -> None:
    """Show one endpoint."""
    ep = Client().call("GET", f"/v1/endpoints/{endpoint_id}")
    out(ep, as_json, _describe(ep))


@endpoints.command("update")
@click.argument("endpoint_id")
@click.option("--min-replicas", type=int)
@click.option("--max-replicas", type=int)
@click.option("--display-name")
@click.option("--inactive-timeout", type=int, help="minutes idle before auto-stop (0 = never)")
@click.option("--target-concurrency", type=float,
              help="requests in flight per replica the autoscaler aims at; 0 = back to the default")
@json_opt
def update(endpoint_id: str, min_replicas: int | None, max_replicas: int | None,
           display_name: str | None, inactive_timeout: int | None, target_concurrency: float | None,
           as_json: bool) -> None:
    """Change bounds, target concurrency, display name or idle timeout."""
    body: dict[str, Any] = {}
    auto: dict[str, Any] = {k: v for k, v in (("min_replicas", min_replicas), ("max_replicas", max_replicas))
                            if v is not None}
    if target_concurrency is not None:
        auto["target_concurrency"] = target_concurrency or None
    if auto:
        body["autoscaling"] = auto
    if display_name is not None:
        body["display_name"] = display_name
    if inactive_timeout is not None:
        body["inactive_timeout"] = inactive_timeout
    if not body:
        fail("nothing to update: pass --min-replicas, --max-replicas, --target-concurrency, "
              "--display-name or --inactive-timeout")
    ep = Client().call("PATCH", f"/v1/endpoints/{endpoint_id}", json=body)
    out(ep, as_json, _describe(ep))


@endpoints.command("scale")
@click.argument("endpoint_id")
@click.argument("replicas", type=int)
@json_opt
def scale(endpoint_id: str, replicas: int, as_json: bool) -> None:
    """Set the desired replica count (clamped to the endpoint's min..max)."""
    ep = Client().call("POST", f"/v1/endpoints/{endpoint_id}/scale", json={"replicas": replicas})
    out(ep, as_json, _describe(ep))


def _set_state(endpoint_id: str, state: str, wait: bool, timeout: float, as_json: bool) -> None:
    client = Client()
    ep = client.call("PATCH", f"/v1/endpoints/{endpoint_id}", json={"state": state})
    if wait:
        ep = _wait(client, endpoint_id, {state}, timeout, as_json)
    out(ep, as_json, _describe(ep))


@endpoints.command("stop")
@click.argument("endpoint_id")
@click.option("--wait/--no-wait", default=False)
@click.option("--timeout", type=float, default=300.0, show_default=True)
@json_opt
def stop(endpoint_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Stop an endpoint (keeps its name and config)."""
    _set_state(endpoint_id, "STOPPED", wait, timeout, as_json)


@endpoints.command("start")
@click.argument("endpoint_id")
@click.option("--wait/--no-wait", default=False)
@click.option("--timeout", type=float, default=900.0, show_default=True)
@json_opt
def start(endpoint_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Start a stopped endpoint."""
    _set_state(endpoint_id, "STARTED", wait, timeout, as_json)


@endpoints.command("delete")
@click.argument("endpoint_id")
@json_opt
def delete(endpoint_id: str, as_json: bool) -> None:
    """Delete an endpoint: it disappears at once; its replicas stop right after."""
    Client().call("DELETE", f"/v1/endpoints/{endpoint_id}")
    out({"id": endpoint_id, "deleted": True}, as_json, f"deleted {endpoint_id}")


@endpoints.command("events")
@click.argument("endpoint_id")
@json_opt
def events(endpoint_id: str, as_json: bool) -> None:
    """What happened to an endpoint, and why."""
    data = Client().call("GET", f"/v1/endpoints/{endpoint_id}/events")["data"]
    out(data, as_json, "\n".join(f"{e['at']}  {e['kind']:<9} {e['message']}" for e in data))


@main.command()
@click.option("--model", help="only shapes that fit this model, with availability")
@json_opt
def hardware(model: str | None, as_json: bool) -> None:
    """Hardware shapes and their prices."""
    params = {"model": model} if model else {}
    data = Client().call("GET", "/v1/hardware", params=params)["data"]
    rows = [[h["id"], f"{h['pricing']['cents_per_minute']:g}", h["specs"]["gpu_type"],
             str(h["specs"]["gpu_count"]), h.get("availability", {}).get("status", "")] for h in data]
    out(data, as_json, table(rows, ["ID", "CENTS/MIN", "TYPE", "COUNT", "AVAILABILITY"]))


@main.command()
@json_opt
def models(as_json: bool) -> None:
    """Models that can be deployed here."""
    data = Client().call("GET", "/v1/catalog/models")["data"]
    rows = [[m["id"], f"{m['parameters_b']:g}B", str(m["context_length"]),
             "yes" if m["deployable"] else "no"] for m in data]
    out(data, as_json, table(rows, ["MODEL", "PARAMS", "CONTEXT", "DEPLOYABLE"]))


@main.command()
@json_opt
def nodes(as_json: bool) -> None:
    """Admin: nodes, their slots, and which replicas hold them."""
    data = Client().call("GET", "/v1/nodes")["data"]
    lines = []
    for n in data:
        kind = f"logical, {n['engine']} engine" if n["declared"] else "discovered"
        lines.append(f"{n['name']}  {n['slots']}x {n['gpu_type']}  ({kind})  {n['free']} free")
        for r in n["replicas"]:
            slots = ",".join(map(str, r["slots"]))
            lines.append(f"  slots {slots:<8} {r['replica']}  {r['status']:<9} {r['endpoint']}")
    out(data, as_json, "\n".join(lines))


@main.command()
@json_opt
def queue(as_json: bool) -> None:
    """Admin: what waits for hardware, per pool, in order."""
    data = Client().call("GET", "/v1/queue")["data"]
    rows = [[q["pool"], str(q["position"] or "-"), q["name"], str(q["queued_replicas"]), q["kind"],
             q["message"]] for q in data]
    out(data, as_json, table(rows, ["POOL", "POS", "ENDPOINT", "WAITING", "KIND", "WHY"]) if rows
         else "nothing is queued")


@main.group()
def quota() -> None:
    """GPU quotas per owner."""


@quota.command("get")
@click.argument("owner")
@json_opt
def quota_get(owner: str, as_json: bool) -> None:
    """An owner's GPU quota and use."""
    q = Client().call("GET", f"/v1/owners/{owner}")
    out(q, as_json, f"{owner}: quota {q['gpu_quota'] if q['gpu_quota'] is not None else 'none'}, "
                     f"{q['gpus_committed']} committed, {q['gpus_in_use']} in use")


@quota.command("set")
@click.argument("owner")
@click.argument("gpus")
@json_opt
def quota_set(owner: str, gpus: str, as_json: bool) -> None:
    """Admin: cap OWNER's GPUs (a number, or 'none')."""
    value: int | None = None
    if gpus.lower() != "none":
        if not gpus.isdigit():
            fail("GPUS must be a whole number or 'none'")
        value = int(gpus)
    q = Client().call("PUT", f"/v1/owners/{owner}/quota", json={"gpus": value})
    out(q, as_json, f"{owner}: quota {q['gpu_quota'] if q['gpu_quota'] is not None else 'none'}")


@main.group()
def billing() -> None:
    """Usage, invoices and budgets."""


@billing.command("usage")
@click.option("--start", help="ISO time; default: the start of this month")
@click.option("--end", help="ISO time; default: now")
@json_opt
def billing_usage(start: str | None, end: str | None, as_json: bool) -> None:
    """Replica-minutes and cost per endpoint."""
    params = {k: v for k, v in (("start", start), ("end", end)) if v}
    u = Client().call("GET", "/v1/billing/usage", params=params)
    rows = [[x["endpoint_name"] or x["endpoint"], x["hardware"] or "-", x["replica_minutes"], x["cents"],
             str(x["tokens_in"]), str(x["tokens_out"])] for x in u["data"]]
    header = ["ENDPOINT", "HARDWARE", "REPLICA-MIN", "CENTS", "TOKENS-IN", "TOKENS-OUT"]
    text = table(rows, header) + f"\ntotal: {u['total_cents']} cents"
    out(u, as_json, text)


@billing.command("invoice")
@click.argument("month")
@json_opt
def billing_invoice(month: str, as_json: bool) -> None:
    """The invoice of MONTH (YYYY-MM, UTC)."""
    inv = Client().call("GET", f"/v1/billing/invoices/{month}")
    rows = [[x["endpoint_name"], x["hardware"], x["replica_minutes"], x["cents"]] for x in inv["lines"]]
    out(inv, as_json, table(rows, ["ENDPOINT", "HARDWARE", "REPLICA-MIN", "CENTS"])
         + f"\ntotal: {inv['total_cents']} cents")


@billing.command("budget")
@click.option("--set", "cents", help="monthly budget in cents ('none' removes it)")
@click.option("--stop/--no-stop", default=None, help="stop my endpoints when the budget is reached")
@json_opt
def billing_budget(cents: str | None, stop: bool | None, as_json: bool) -> None:
    """Show or set the monthly budget, with its alerts."""
    client = Client()
    if cents is not None or stop is not None:
        current = client.call("GET", "/v1/billing/budget")
        value = current["monthly_cents"] if cents is None else (None if cents.lower() == "none" else cents)
        body = {"monthly_cents": value, "stop_at_limit": current["stop_at_limit"] if stop is None else stop}
        b = client.call("PUT", "/v1/billing/budget", json=body)
    else:
        b = client.call("GET", "/v1/billing/budget")
    lines = [f"budget: {b['monthly_cents'] or 'none'} cents/month; stop at limit: {b['stop_at_limit']}; "
             f"spent this month: {b['month_to_date_cents']} cents"]
    lines += [f"alert {a['at']}: {a['message']}" for a in b["alerts"]]
    out(b, as_json, "\n".join(lines))


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--owner", help="admin: create the key for this owner (created on first use)")
@click.option("--name")
@click.option("--admin", "is_admin", is_flag=True)
@click.option("--scope", type=click.Choice(["manage", "inference"]), default="manage", show_default=True,
              help="inference: a key that can only call models (for an application)")
@json_opt
def keys_create(owner: str | None, name: str | None, is_admin: bool, scope: str, as_json: bool) -> None:
    """Create a key; its secret is shown once."""
    body: dict[str, Any] = {"admin": is_admin, "scope": scope}
    if owner:
        body["owner"] = owner
    if name:
        body["name"] = name
    k = Client().call("POST", "/v1/keys", json=body)
    out(k, as_json, f"{k['key']}\n(id {k['id']}, owner {k['owner']}, scope {k['scope']}; shown once: store it now)")


@keys.command("list")
@click.option("--all", "all_owners", is_flag=True)
@json_opt
def keys_list(all_owners: bool, as_json: bool) -> None:
    """List keys by prefix."""
    data = Client().call("GET", "/v1/keys", params={"all": str(all_owners).lower()})["data"]
    rows = [[k["id"], k["prefix"] + "…", k["owner"], k["scope"], "revoked" if k["revoked_at"] else "active"]
            for k in data]
    out(data, as_json, table(rows, ["ID", "PREFIX", "OWNER", "SCOPE", "STATUS"]))


@keys.command("revoke")
@click.argument("key_id")
@json_opt
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke a key at once."""
    k = Client().call("DELETE", f"/v1/keys/{key_id}")
    out(k, as_json, f"revoked {key_id}")


@main.command("demo-finetune")
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--base", type=click.Path(path_type=str), help="a build of dedicate/tiny-chat; default: the data "
                                                              "directory's (built if missing)")
@click.option("--reply", default=None, help="what the fine-tune learns to answer")
@click.option("--steps", type=int, default=60, show_default=True)
def demo_finetune(dest: str, base: str | None, reply: str | None, steps: int) -> None:
    """Make a fine-tune of the demo model offline into DEST (a few real training steps), to register
    with POST /v2/projects/{project}/models."""
    if base is None:
        base = str(location().data_dir / "models" / "tiny-chat")
        subprocess.run([sys.executable, "-m", "dedicate.engines.demo_model", base], check=True,
                       stdout=subprocess.DEVNULL)
    argv = [sys.executable, "-m", "dedicate.engines.demo_finetune", base, dest, "--steps", str(steps)]
    if reply is not None:
        argv += ["--reply", reply]
    done = subprocess.run(argv, capture_output=True, text=True)  # torch stays out of this process
    if done.returncode != 0:
        fail(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "the fine-tune failed")
    click.echo(done.stdout.strip())


main.add_command(whoami)
main.add_command(deploy)
main.add_command(deployments)
main.add_command(backup_cmd)
main.add_command(restore_cmd)


if __name__ == "__main__":
    main()
