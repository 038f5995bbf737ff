"""A scale-down from 4 to 2 synthetic replicas under steady load loses no request, with the stop signal
sent while the gateway still routes to the replicas going away, as the reconciler sends it."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx

from dedicate.engines.synthetic import build_app
from dedicate.engines.synthetic_engine import SyntheticConfig, SyntheticEngine
from dedicate.settings import GatewaySettings
from tests.gateway.fakes import World, chat, eventually, gateway, make_endpoint, make_replica, run, serve, stopping


async def _client_loop(c: httpx.AsyncClient, stop: asyncio.Event, outcomes: list[str], n: int) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        stream = (i + n) % 2 == 0
        body = chat(max_tokens=4, stream=stream)
        r = await c.post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            outcomes.append(f"HTTP {r.status_code}: {r.text[:200]}")
        elif stream:
            ok = r.text.endswith("data: [DONE]\n\n") and '"error"' not in r.text and "tok4" in r.text
            outcomes.append("ok" if ok else f"bad stream: {r.text[-200:]}")
        else:
            content = json.loads(r.text)["choices"][0]["message"]["content"]
            outcomes.append("ok" if content == "tok1 tok2 tok3 tok4" else f"bad body: {r.text[:200]}")


def test_scaling_down_from_four_to_two_under_load_loses_no_request() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        config = SyntheticConfig(served_model_name="alice/chat", ttft_s=0.005, tokens_per_s=400, max_streams=8)
        engines = [SyntheticEngine(config) for _ in range(4)]
        for e in engines:
            e.attach(loop)
        ep = make_endpoint()
        servers = [contextlib.AsyncExitStack() for _ in engines]
        world = World([ep], [])
        try:
            for i, (engine, stack) in enumerate(zip(engines, servers, strict=True)):
                port = await stack.enter_async_context(serve(build_app(engine, "rtok")))
                world.replicas.append(make_replica(f"r-{i}", ep, f"http://127.0.0.1:{port}"))
            async with gateway(world, GatewaySettings(table_ttl_s=0.2)) as (gw, c):
                stop = asyncio.Event()
                outcomes: list[str] = []
                clients = [asyncio.ensure_future(_client_loop(c, stop, outcomes, n)) for n in range(16)]
                await eventually(lambda: len(outcomes) >= 150)
                assert all(e.metrics.requests_total > 0 for e in engines), "all four served before the scale-down"
                # The reconciler's scale-down, in production order: the replicas are marked stopping and
                # told to drain (SIGTERM) in the same pass, while the gateway, whose table is up to
                # table_ttl_s old, still routes to them. What they were running must finish (a drain
                # that ended it at once would fail those requests), and what they refuse meanwhile is
                # retried elsewhere before its first byte.
                world.replicas = world.replicas[:2] + [stopping(r) for r in world.replicas[2:]]
                running_at_drain = sum(e.admission.running for e in engines[2:])
                for e in engines[2:]:
                    e.drain(grace_s=30)

                def routed_to_the_two_left() -> bool:
                    route = gw.table.snapshot.routes[ep.name]
                    return ({t.replica_id for t in route.targets} == {"r-0", "r-1"}
                            and not {"r-2", "r-3"} & set(gw.table.states))  # none of ours still running there

                await eventually(routed_to_the_two_left)
                await eventually(lambda: all(e.admission.running == 0 and e.admission.waiting == 0
                                             for e in engines[2:]))
                served_before = [e.metrics.requests_total for e in engines[2:]]
                for stack in servers[2:]:
                    await stack.aclose()  # the processes exit: from now on, connections are refused
                at_scale_down = len(outcomes)
                await eventually(lambda: len(outcomes) >= at_scale_down + 150)
                stop.set()
                await asyncio.gather(*clients)
            bad = [o for o in outcomes if o != "ok"]
            assert bad == [], bad[:5]
            assert sum(e.metrics.requests_total for e in engines) == len(outcomes), "each request served once"
            assert [e.metrics.requests_total for e in engines[2:]] == served_before, \
                "no work once the gateway dropped them"
            assert running_at_drain > 0, "the drain began with work in flight on the draining replicas"
            assert all(s.in_flight == 0 for s in gw.table.states.values())
            counters = gw.signals.endpoints[ep.id]
            assert (counters.requests, counters.errors, counters.in_flight) == (len(outcomes), 0, 0)
        finally:
            for stack in servers:
                await stack.aclose()
    run(scenario(), timeout=120)
