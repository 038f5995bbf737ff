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

Replica-minutes come from the replicas' recorded facts (first ready to stop request), clipped to
the slice. All figures are converted back to trace time (multiplied by ``--compress``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from autoscale import (
    ROOT,
    Request,
    Result,
    Setup,
    peak_concurrency,
    print_table,
    replay_all,
    setup_from,
    trace_slice,
)

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


class Server:
    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        (root / "config.toml").write_text(text)
        env = {**os.environ, "DEDICATE_DATA_DIR": str(root), "DEDICATE_PORT": "0",
               "DEDICATE_CONFIG": str(root / "config.toml")}
        env.pop("DEDICATE_TEST_CLOCK_FILE", None)
        self.log = open(root / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "dedicate.cli.main", "up"], env=env, cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (root / "port").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{self.tail()}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{int((root / 'port').read_text())}"
        self.key = (root / "admin.key").read_text().strip()

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "server.log").read_text().splitlines()[-n:])
        return ""

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def wait_ready(c: httpx.Client, endpoint_id: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"/v1/endpoints/{endpoint_id}").json()["replicas"]
        if r["ready"] == n and r["starting"] == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"endpoint {endpoint_id} never had {n} ready replicas")


async def replay(url: str, key: str, name: str, requests: Sequence[Request]) -> tuple[list[float], float, int]:
    """Send the slice to one endpoint: first-token times, the wall-clock start, failures."""
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
                    ttfts.append(first - sent)
            except httpx.HTTPError:
                failures += 1

        wall_start = time.time() + (start - loop.time())
        await asyncio.gather(*(one(r) for r in requests))
    return ttfts, wall_start, failures


def _t(s: str | None) -> float | None:
    return None if s is None else datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def billed_seconds(c: httpx.Client, endpoint_id: str, start: float, end: float) -> float:
    total = 0.0
    for r in c.get(f"/v1/endpoints/{endpoint_id}/replicas", params={"all": "true"}).json()["data"]:
        ready = _t(r["first_ready_at"])
        if ready is None:
            continue
        until = _t(r["stop_requested_at"]) or _t(r["last_probe_ok_at"]) or end
        total += max(0.0, min(until, end) - max(ready, start))
    return total


def run_policy(policy: str, a: argparse.Namespace, setup: Setup, fixed: int, requests: Sequence[Request]
               ) -> tuple[Result, list[str], int]:
    """One policy's endpoint on a fresh server: warmed to the fixed fleet's size, then the slice."""
    root = Path(tempfile.mkdtemp(prefix="dedicate-autoscale-"))
    server = Server(root, config(setup, fixed))
    try:
        with httpx.Client(base_url=server.url, timeout=60, headers={"authorization": f"Bearer {server.key}"}) as c:
            ep = c.post("/v1/endpoints", json={"model": MODEL, "hardware": HARDWARE, "display_name": policy,
                                               "autoscaling": {"min_replicas": fixed, "max_replicas": fixed}})
            if ep.status_code != 200:
                raise SystemExit(f"creating the {policy} endpoint failed: {ep.text}")
            endpoint_id, name = ep.json()["id"], ep.json()["name"]
            wait_ready(c, endpoint_id, fixed)
            if policy == "dedicate":
                auto: dict[str, Any] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas}
                if a.target is not None:
                    auto["target_concurrency"] = a.target
                c.patch(f"/v1/endpoints/{endpoint_id}", json={"autoscaling": auto}).raise_for_status()
            ttfts, wall_start, failures = asyncio.run(replay(server.url, server.key, name, requests))
            wall_end = wall_start + requests[-1].at
            events = [e["message"] for e in c.get(f"/v1/endpoints/{endpoint_id}/events").json()["data"]
                      if e["kind"] == "scaled"]
            peak = max([fixed] + [int(m.split(" → ", 1)[1].split(":", 1)[0]) for m in events if " → " in m])
            result = Result(policy, billed_seconds(c, endpoint_id, wall_start, wall_end), ttfts, setup.slo_s,
                            len(events), peak, events)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return result, events, failures


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
    virtual = [r for r in replay_all(setup, compressed) if r.name in POLICIES]
    fixed = next(iter(r.peak_replicas for r in virtual if r.name == "fixed_peak"))
    assert fixed >= 1 and peak_concurrency(compressed, setup.model) > 0
    real, failures = [], 0
    for policy in POLICIES:
        result, _, failed = run_policy(policy, a, setup, fixed, compressed)
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
