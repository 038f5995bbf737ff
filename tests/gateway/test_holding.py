"""No ready replica: held in a bounded per-endpoint queue up to a timeout; a stopped endpoint answers at once."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.settings import GatewaySettings
from tests.gateway.fakes import (
    FakeReplica,
    World,
    chat,
    eventually,
    gateway,
    make_endpoint,
    make_replica,
    replicas,
    run,
)


def test_a_starting_endpoint_holds_requests_until_a_replica_is_ready() -> None:
    async def scenario() -> None:
        r = FakeReplica("a")
        ep = make_endpoint(state=EndpointState.STARTING)
        world = World([ep], [make_replica("r-a", ep, "http://127.0.0.1:1", ready=False)])
        async with replicas(r), gateway(world, GatewaySettings(hold_s=30)) as (gw, c):
            held = [asyncio.ensure_future(c.post("/v1/chat/completions", json=chat())) for _ in range(3)]
            counters = gw.signals.endpoint(ep.id, ep.name, ep.owner)
            await eventually(lambda: counters.queued == 3)
            assert r.calls == 0
            world.endpoints = [replace(ep, state=EndpointState.STARTED)]
            world.replicas = [make_replica("r-a", ep, r.url)]
            answers = await asyncio.gather(*held)
            assert [a.status_code for a in answers] == [200, 200, 200]
            assert r.calls == 3
            assert (counters.queued, counters.in_flight, counters.requests) == (0, 0, 3)
    run(scenario())


def test_scaled_to_zero_holds_and_counts_as_queued_then_503_with_retry_after() -> None:
    async def scenario() -> None:
        ep = make_endpoint(desired=0)
        world = World([ep], [])
        cfg = GatewaySettings(hold_s=3, retry_after_s=7)  # long enough to be seen held
        async with gateway(world, cfg) as (gw, c):
            task = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat()))
            await eventually(lambda: ep.id in gw.signals.endpoints and gw.signals.endpoints[ep.id].queued == 1)
            rows, _ = gw.signals.collect(ep.created_at, gw.monotonic())
            assert [(s.endpoint_id, s.queued, s.in_flight) for s in rows] == [(ep.id, 1, 0)]
            r = await task
            assert r.status_code == 503 and r.headers["retry-after"] == "7"
            assert "no ready replica" in r.json()["error"]["message"]
            counters = gw.signals.endpoints[ep.id]
            assert (counters.queued, counters.requests, counters.errors) == (0, 1, 1)
    run(scenario())


def test_a_full_queue_answers_429_with_retry_after() -> None:
    async def scenario() -> None:
        ep = make_endpoint(state=EndpointState.PENDING)
        world = World([ep], [])
        async with gateway(world, GatewaySettings(hold_s=30, queue_size=2, retry_after_s=3)) as (gw, c):
            held = [asyncio.ensure_future(c.post("/v1/chat/completions", json=chat())) for _ in range(2)]
            await eventually(lambda: ep.id in gw.signals.endpoints and gw.signals.endpoints[ep.id].queued == 2)
            r = await c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 429 and r.headers["retry-after"] == "3"
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            world.endpoints = [replace(ep, intent=Intent.STOP, state=EndpointState.STOPPED)]
            stopped = await asyncio.gather(*held)
            assert [s.status_code for s in stopped] == [400, 400], "a stop while held answers at once"
            assert gw.signals.endpoints[ep.id].queued == 0
    run(scenario())


def test_a_stopped_endpoint_answers_endpoint_stopped_at_once() -> None:
    async def scenario() -> None:
        r = FakeReplica("a")
        async with replicas(r):  # a live replica the gateway could reach, and must not
            for intent, state in ((Intent.STOP, EndpointState.STOPPED), (Intent.STOP, EndpointState.STOPPING),
                                  (Intent.STOP, EndpointState.STARTED)):
                ep = make_endpoint(intent=intent, state=state)
                world = World([ep], [make_replica("r-a", ep, r.url)])
                async with gateway(world, GatewaySettings(hold_s=60)) as (_gw, c):
                    resp = await c.post("/v1/chat/completions", json=chat())
                    assert resp.status_code == 400
                    err = resp.json()["error"]
                    assert err["code"] == "endpoint_stopped" and "start it" in err["message"]
                    assert resp.headers["x-should-retry"] == "false"
        assert r.calls == 0
    run(scenario())
