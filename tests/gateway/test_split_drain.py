"""A deployment whose weight goes to 0 takes no new request and finishes the ones it has."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from dedicate.domain.routes import Route, SplitEntry, Visibility
from dedicate.settings import GatewaySettings
from tests.gateway.fakes import T0, FakeReplica, World, chat, gateway, make_endpoint, make_replica, replicas, run


def test_weight_zero_drains_a_deployment_without_failing_its_requests_in_flight() -> None:
    async def scenario() -> None:
        blue, green = FakeReplica("blue", mode="sse"), FakeReplica("green")
        blue.gate = asyncio.Queue()
        async with replicas(blue, green):
            eb = make_endpoint("alice/chat/blue", ep_id="endpoint-blue")
            eg = make_endpoint("alice/chat/green", ep_id="endpoint-green")
            route = Route("ep_1", "alice", "alice/chat", Visibility.PRIVATE, (SplitEntry("endpoint-blue", 1.0),),
                          1, T0, T0)
            world = World([eb, eg], [make_replica("r-b", eb, blue.url), make_replica("r-g", eg, green.url)],
                          routes=[route])
            async with gateway(world, GatewaySettings(table_ttl_s=0.05)) as (gw, c):
                stream = c.stream("POST", "/v1/chat/completions", json=chat(stream=True))
                held = await stream.__aenter__()
                assert held.status_code == 200 and blue.calls == 1, "the split sent it to blue"
                assert held.headers["x-dedicate-deployment"] == "alice/chat/blue"
                world.routes = [replace(route, split=(SplitEntry("endpoint-blue", 0.0),
                                                      SplitEntry("endpoint-green", 1.0)))]
                await gw.table.refresh()
                for _ in range(10):
                    r = await c.post("/v1/chat/completions", json=chat())
                    assert r.status_code == 200 and r.json()["replica"] == "green"
                for _ in range(blue.events):
                    blue.gate.put_nowait(None)
                body = await held.aread()
                await stream.__aexit__(None, None, None)
                assert body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body, body
                assert blue.calls == 1, "blue got nothing new once its weight was 0"
    run(scenario())


def test_a_per_replica_cap_holds_the_request_past_it_until_a_slot_frees() -> None:
    async def scenario() -> None:
        one = FakeReplica("one", mode="sse")
        one.gate = asyncio.Queue()
        async with replicas(one):
            ep = replace(make_endpoint(), max_concurrency=1)
            world = World([ep], [make_replica("r-1", ep, one.url)])
            async with gateway(world, GatewaySettings(table_ttl_s=0.05, hold_s=30)) as (_gw, c):
                first = c.stream("POST", "/v1/chat/completions", json=chat(stream=True))
                held = await first.__aenter__()
                assert held.status_code == 200 and one.calls == 1
                second = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat()))
                await asyncio.sleep(0.5)
                assert not second.done() and one.calls == 1, "the second waits: the replica is at its cap of 1"
                for _ in range(one.events):
                    one.gate.put_nowait(None)
                await held.aread()
                await first.__aexit__(None, None, None)
                one.mode = "ok"
                r = await asyncio.wait_for(second, 10)
                assert r.status_code == 200 and one.calls == 2, "then it went, once the first was done"
    run(scenario())
