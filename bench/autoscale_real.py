"""``bench/autoscale.py --real``: a compressed slice of the trace through a real server, in real time.

For each policy a fresh ``dedicate up`` process (its own data directory under a temporary
folder) runs declared logical H100 nodes whose replicas are synthetic-engine processes configured
like the virtual model, with every duration divided by ``--compress``: the engine's first-token
delay and start-up delay, the autoscaling pass, the gateway's signal writes, the reconciler's
pass and the policy's stabilisation window. Generation time is divided by sending ``1/compress``
of each request's tokens at the model's token rate (the same time in flight, and fewer events for
one machine's gateway and client to carry). One endpoint gets the slice through the gateway:
``dedicate`` (autoscaled, default target concurrency) or ``fixed_peak`` (min = max = the slice's
peak fleet); both start with the fixed fleet's size ready, as in the virtual replay, which runs
the same compressed requests. A request's time to first token is measured by the client, from the
moment it is sent to its first streamed content chunk.

Replica-minutes are what the billing ledger charges the endpoint for the slice
(``GET /v1/billing/usage`` over its wall-clock span, after the warm-up). All figures are converted
back to trace time (multiplied by ``--compress``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, Request, trace_slice
from autoscale import Result, Setup, print_table, replay_all, setup_from

sys.path.insert(0, str(ROOT))
from tests.e2e.harness import Server  # the e2e tests' server process, with its full teardown

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HARDWARE = "1x_nvidia_h100_80gb_sxm"
POLICIES = ("dedicate", "fixed_peak")


def config(setup: Setup, fixed: int) -> str:
    m, t = setup.model, setup.timing
    nodes = "".join(f'\n[[nodes]]\nname = "node-{i:02d}"\ngpu_type = "h100-80gb"\ngpus = {setup.fleet.gpus_per_node}\n'
                    f'engine = "synthetic"\n' for i in range(setup.fleet.nodes))
    nodes += f'\n[[nodes]]\nname = "node-fixed"\ngpu_type = "h100-80gb"\ngpus = {fixed}\nengine = "synthetic"\n'
    return f"""
[cpu]
slots = 0
{nodes}
[engines.synthetic]
startup_delay_s = {m.startup_s}
ttft_s = {m.ttft_s}
tokens_per_s = {m.tokens_per_s}
max_streams = {m.max_streams}
max_queue = 100000

[timing]
reconcile_interval_s = {t.reconcile_s}

[autoscaling]
interval_s = {t.interval_s}
stabilisation_s = {setup.stabilisation_s}

[gateway]
signals_interval_s = {t.signal_s}
hold_s = 600
queue_size = 100000
"""


async def replay(url: str, key: str, name: str, requests: Sequence[Request], warmup_s: float = 0.0
                 ) -> tuple[list[float], float, int]:
    """Send the slice to one endpoint: first-token times (of requests after the warm-up), the wall-clock
    start, failures."""
    ttfts: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(900.0), limits=limits,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 1.0

        async def one(r: Request) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, start + r.at - loop.time()))
            sent = loop.time()
            body = {"model": name, "stream": True, "max_tokens": r.output_tokens,
                    "messages": [{"role": "user", "content": "hello"}]}
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    first = None
                    async for chunk in resp.aiter_raw():
                        if first is None and b'"content"' in chunk:
                            first = loop.time()
                    if resp.status_code != 200 or first is None:
                        failures += 1
                        return
                    if r.at >= warmup_s:
                        ttfts.append(first - sent)
            except httpx.HTTPError:
                failures += 1

        wall_start = time.time() + (start - loop.time())
        await asyncio.gather(*(one(r) for r in requests))
    return ttfts, wall_start, failures


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def billed_seconds(c: httpx.Client, endpoint_id: str, start: float, end: float) -> float:
    """What the ledger bills the endpoint for [start, end): its own clipping of the ready intervals."""
    usage = c.get("/v1/billing/usage", params={"start": iso(start), "end": iso(end)})
    usage.raise_for_status()
    return sum(float(u["replica_seconds"]) for u in usage.json()["data"] if u["endpoint"] == endpoint_id)


def peak_active(c: httpx.Client, endpoint_id: str, start: float) -> int:
    """The most replicas placed and not yet asked to stop at once, from ``start`` on (as the virtual replay counts)."""
    spans = []
    for r in c.get(f"/v1/endpoints/{endpoint_id}/replicas", params={"all": "true"}).json()["data"]:
        placed = datetime.fromisoformat(r["placed_at"].replace("Z", "+00:00")).timestamp()
        stop = r["stop_requested_at"]
        spans.append((placed, math.inf if stop is None else
                      datetime.fromisoformat(stop.replace("Z", "+00:00")).timestamp()))
    moments = [start] + [a for a, _ in spans if a > start]
    return max((sum(1 for a, b in spans if a <= t < b) for t in moments), default=0)


def run_policy(policy: str, a: argparse.Namespace, setup: Setup, fixed: int, requests: Sequence[Request]
               ) -> tuple[Result, int]:
    """One policy's endpoint on a fresh server: warmed to the fixed fleet's size, then the slice."""
    root = Path(tempfile.mkdtemp(prefix="dedicate-autoscale-"))
    server = Server(root, config=config(setup, fixed))
    try:
        server.start()
        with server.client() as c:
            ep = c.post("/v1/endpoints", json={"model": MODEL, "hardware": HARDWARE, "display_name": policy,
                                               "autoscaling": {"min_replicas": fixed, "max_replicas": fixed}})
            if ep.status_code != 200:
                raise SystemExit(f"creating the {policy} endpoint failed: {ep.text}")
            endpoint_id, name = ep.json()["id"], ep.json()["name"]
            server.wait_for(endpoint_id, lambda e: e["replicas"]["ready"] == fixed and e["replicas"]["starting"] == 0,
                            f"had {fixed} ready replicas", timeout=120)
            if policy == "dedicate":
                auto: dict[str, Any] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas}
                if a.target is not None:
                    auto["target_concurrency"] = a.target
                c.patch(f"/v1/endpoints/{endpoint_id}", json={"autoscaling": auto}).raise_for_status()
            ttfts, wall_start, failures = asyncio.run(replay(server.url, server.admin_key, name, requests,
                                                             setup.warmup_s))
            counted_from, wall_end = wall_start + setup.warmup_s, wall_start + requests[-1].at
            events = [e["message"] for e in c.get(f"/v1/endpoints/{endpoint_id}/events").json()["data"]
                      if e["kind"] == "scaled"]
            result = Result(policy, billed_seconds(c, endpoint_id, counted_from, wall_end), ttfts, setup.slo_s,
                            len(events), peak_active(c, endpoint_id, wall_start), events)
    finally:
        server.terminate()
        server.cleanup()  # also any replica process group the server left behind
        shutil.rmtree(root, ignore_errors=True)
    return result, failures


def run_real(a: argparse.Namespace, requests: Sequence[Request]) -> dict[str, Any]:
    k = a.compress
    piece = trace_slice(requests, a.slice_start_s, a.slice_s)
    if not piece:
        raise SystemExit("the slice holds no request; choose --slice-start-s within the trace")
    # Every duration divided by k. Generation time too, by sending 1/k of the tokens at the same
    # token rate: the same time in flight, and k times fewer events for the gateway and the client.
    base = setup_from(a, k)
    setup = replace(base, model=replace(base.model, tokens_per_s=a.tokens_per_s))
    compressed = [Request(r.at / k, r.prompt_tokens, max(1, math.ceil(r.output_tokens / k))) for r in piece]
    print(f"\nreal replay: trace seconds {a.slice_start_s:g}..{a.slice_start_s + a.slice_s:g} "
          f"({len(piece)} requests), {k:g} times faster, through a real server to synthetic replicas")
    virtual = replay_all(setup, compressed, only=POLICIES)
    fixed = next(r.peak_replicas for r in virtual if r.name == "fixed_peak")
    real, failures = [], 0
    for policy in POLICIES:
        result, failed = run_policy(policy, a, setup, fixed, compressed)
        real.append(result)
        failures += failed
    v = print_table(virtual, "  the slice, virtual (in trace time):", scale=k)
    r = print_table(real, "  the slice, real (in trace time):", scale=k)
    diff = {p: {key: round(float(r[p][key]) - float(v[p][key]), 1) for key in v[p]} for p in POLICIES}
    print("  real minus virtual:")
    for p in POLICIES:
        print(f"    {p:<11} " + ", ".join(f"{key} {val:+g}" for key, val in diff[p].items()))
    if failures:
        print(f"  {failures} request(s) failed in the real replay")
    for res in (*virtual, *real):
        if res.name == "dedicate":
            kind = "real" if res in real else "virtual"
            print(f"  dedicate's decisions, {kind} (seconds compressed):")
            print("\n".join(f"    {e}" for e in res.events) or "    none")
    return {"virtual": v, "real": r, "difference": diff, "failed_requests": failures}
