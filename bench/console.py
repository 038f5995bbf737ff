"""Console benchmark: how long the web console's pages take to render, server-side, with 200 endpoints.

Run from the repository root::

    .venv/bin/python bench/console.py [--endpoints 200] [--requests 30]

It builds one owner's installation on a real SQLite store and the fake runtime (declared 8-GPU
nodes, a probe that always answers healthy, a manual clock): ``--endpoints`` endpoints created
through ``POST /v1/endpoints``, of which 80 % run 2 one-GPU replicas each on nodes sized to hold
them exactly, 10 % wait in the queue for that full capacity and 10 % are stopped; reconcile passes
place and start every replica, then an hour of passes, one every ``--pass-s`` (20 s: an open
interval per replica grows), bills it. Then it asks the
whole app (session cookie, CSRF wrapper, gateway front, the pages and the API, in process through
httpx's ASGI transport, so no socket and no load generator are in the figures) for:

- ``/`` (Endpoints, home), the rows fragment it polls, ``/billing`` and one endpoint's detail page,
  signed in as the owner; ``/admin`` signed in as the admin (owners, quotas, nodes, the queue);
- as the baselines, in the same run and on the same data: ``GET /v2/projects/{p}/endpoints?limit=N``,
  the JSON of the same endpoints with their deployments, replicas and costs (what the home page
  reads, through the same service call), ``GET /v1/endpoints?limit=N``, Together's flat list (no
  replicas, no cost), and ``GET /healthz``, a route that does nothing (the floor of the app).

Each is asked ``--requests`` times after one untimed request. It prints p50/p99 in ms, the ratio
of each to the v2 list, the target (every page under 300 ms at 200 endpoints), and ends
with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile

from dedicate.clock import ManualClock
from dedicate.control.reconciler import Reconciler
from dedicate.domain.records import Address
from dedicate.runtimes.fake import FakeRuntime
from dedicate.server import build_parts, create_app, tune_collector
from dedicate.settings import load_settings
from dedicate.web.session import COOKIE

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HARDWARE = "1x_nvidia_h100_80gb_sxm"
REPLICAS = 2  # per running endpoint
TARGET_MS = 300.0
OWNER = "team-a"


def config(nodes: int) -> str:
    lines = ["[cpu]", "slots = 0", "", "[timing]", "reconcile_interval_s = 1.0", ""]
    for i in range(nodes):
        lines += ["[[nodes]]", f'name = "gpu-{i:03d}"', 'gpu_type = "h100-80gb"', "gpus = 8",
                  'engine = "synthetic"', ""]
    return "\n".join(lines)


async def build(work: Path, endpoints: int, pass_s: float) -> tuple[Any, str, str, str]:
    """The installation: returns the app, the owner's key, the admin's key and one running endpoint's id."""
    running = endpoints * 8 // 10
    queued = endpoints // 10
    nodes = running * REPLICAS // 8 + (1 if running * REPLICAS % 8 else 0)
    (work / "config.toml").write_text(config(nodes))
    settings = load_settings({"DEDICATE_CONFIG": str(work / "config.toml"), "DEDICATE_DATA_DIR": str(work / "data")})
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    parts = build_parts(settings, clock)
    store = parts.store
    _, admin = store.create_key("admin", is_admin=True, name="bench", now=clock.now())
    _, owner = store.create_key(OWNER, is_admin=False, name="console", now=clock.now())

    async def healthy(address: Address) -> bool:
        return True

    # The app's own loops never run (no lifespan): this reconciler, on the fake runtime, is driven by hand.
    rec = Reconciler(store, FakeRuntime(list(parts.runtime.nodes())), settings, clock, probe=healthy)
    app = create_app(parts)
    first = ""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test",
                                 headers={"authorization": f"Bearer {owner}"}) as c:
        for i in range(endpoints):
            state = "STOPPED" if i >= running + queued else "STARTED"
            r = await c.post("/v1/endpoints", json={
                "model": MODEL, "hardware": HARDWARE, "display_name": f"{OWNER} service {i:03d}", "state": state,
                "autoscaling": {"min_replicas": REPLICAS, "max_replicas": REPLICAS + 2},
                "inactive_timeout": 60})
            if r.status_code != 200:
                raise SystemExit(f"POST /v1/endpoints answered {r.status_code}: {r.text[:300]}")
            first = first or r.json()["id"]
    for _ in range(30):  # place, launch, probe
        clock.advance(1.0)
        await rec.pass_once()
        await rec.settle()
    ready = sum(1 for r in store.live_replicas() if r.status.value == "ready")
    if ready != running * REPLICAS:
        raise SystemExit(f"{ready} replicas ready, expected {running * REPLICAS}")
    for _ in range(round(3600 / pass_s)):  # an hour billed
        clock.advance(pass_s)
        await rec.pass_once()
        await rec.settle()
    return app, owner, admin, first


async def timed(c: httpx.AsyncClient, path: str, n: int, **kw: Any) -> list[float]:
    r = await c.get(path, **kw)  # untimed: caches and the thread pool warm
    if r.status_code != 200:
        raise SystemExit(f"GET {path} answered {r.status_code}: {r.text[:300]}")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await c.get(path, **kw)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"GET {path} answered {r.status_code}")
    return sorted(out)


def main(argv: list[str] | None = None) -> None:
    thresholds = gc.get_threshold()
    try:
        asyncio.run(run(argv))
    finally:  # as it was: a smoke test runs this inside the test session
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def run(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--endpoints", type=int, default=200)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--pass-s", type=float, default=20.0,
                    help="seconds between the billing hour's passes; over 30 s, each pass opens a new interval "
                         "per replica (a replica seen ready only now and then), 60 intervals per replica-hour")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dedicate-bench-console-") as tmp:
        t0 = time.perf_counter()
        app, owner, admin, first = await build(Path(tmp), args.endpoints, args.pass_s)
        print(f"built {args.endpoints} endpoints in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        tune_collector()  # as `dedicate up` does before it serves
        transport = httpx.ASGITransport(app=app)
        n = args.requests
        figures: dict[str, Any] = {"endpoints": args.endpoints, "requests": n, "pass_s": args.pass_s}
        samples: dict[str, list[float]] = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
            signed_in = {"headers": {"cookie": f"{COOKIE}={owner}"}}
            samples["home"] = await timed(c, "/", n, **signed_in)
            samples["rows"] = await timed(c, "/ui/endpoints/rows", n, **signed_in)
            samples["billing"] = await timed(c, "/billing", n, **signed_in)
            samples["detail"] = await timed(c, f"/endpoints/{first}", n, **signed_in)
            samples["admin"] = await timed(c, "/admin", n, headers={"cookie": f"{COOKIE}={admin}"})
            bearer = {"headers": {"authorization": f"Bearer {owner}"}}
            samples["api_list"] = await timed(c, f"/v1/endpoints?limit={args.endpoints}", n, **bearer)
            samples["api_v2_list"] = await timed(c, f"/v2/projects/proj_{OWNER}/endpoints?limit={args.endpoints}",
                                                 n, **bearer)
            samples["healthz"] = await timed(c, "/healthz", n)
            home = (await c.get("/", **signed_in)).text
            figures["home_rows"] = home.count("<tr") - 1
    print(f"\n{'page':<28}{'p50 ms':>10}{'p99 ms':>10}{'× v2 list':>12}")
    labels = {"home": "/ (Endpoints)", "rows": "/ui/endpoints/rows", "billing": "/billing",
              "detail": "/endpoints/{id}", "admin": "/admin (as admin)",
              "api_list": "GET /v1/endpoints", "api_v2_list": "GET /v2/.../endpoints",
              "healthz": "GET /healthz (floor)"}
    base = percentile(samples["api_v2_list"], 50)
    for key, values in samples.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        figures[f"{key}_p50_ms"], figures[f"{key}_p99_ms"] = round(p50, 1), round(p99, 1)
        figures[f"{key}_vs_v2_list"] = round(p50 / base, 2)
        print(f"{labels[key]:<28}{p50:>10.1f}{p99:>10.1f}{p50 / base:>12.2f}")
    pages = ("home", "rows", "billing", "detail", "admin")
    worst = max(figures[f"{k}_p99_ms"] for k in pages)
    figures["target_ms"] = TARGET_MS
    figures["meets_target"] = worst < TARGET_MS
    print(f"\ntarget: every page under {TARGET_MS:.0f} ms at 200 endpoints; worst page p99 {worst:.1f} ms: "
          f"{'met' if worst < TARGET_MS else 'NOT met'}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
