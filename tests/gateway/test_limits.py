"""Per-key rate and concurrency, the per-owner ceiling, body and max_tokens caps."""

from __future__ import annotations

import asyncio

from dedicate.settings import GatewaySettings
from tests.gateway.fakes import (
    FakeClock,
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


def _world(fake: FakeReplica) -> World:
    ep = make_endpoint()
    return World([ep], [make_replica("r-a", ep, fake.url)])


def test_a_key_over_its_rate_gets_429_with_retry_after_until_its_bucket_refills() -> None:
    async def scenario() -> None:
        r = FakeReplica("a")
        clock = FakeClock()
        async with replicas(r), gateway(_world(r), GatewaySettings(key_rps=0.5, key_burst=2), clock) as (_gw, c):
            assert [(await c.post("/v1/chat/completions", json=chat())).status_code for _ in range(2)] == [200, 200]
            over = await c.post("/v1/chat/completions", json=chat())
            assert over.status_code == 429 and over.headers["retry-after"] == "2"
            assert over.json()["error"]["type"] == "rate_limit_error"
            other = await c.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer k-alice2"})
            assert other.status_code == 200, "another key of the same owner has its own bucket"
            clock.advance(2.0)
            assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
            assert (await c.post("/v1/chat/completions", json=chat())).status_code == 429
            assert r.calls == 4, "refused requests never reach a replica"
    run(scenario())


def test_an_owner_over_its_rate_gets_429_over_all_its_keys_and_a_refusal_costs_no_key_token() -> None:
    async def scenario() -> None:
        r = FakeReplica("a")
        clock = FakeClock()
        cfg = GatewaySettings(key_rps=0.1, key_burst=1, owner_rps=1, owner_burst=2)  # keys refill slowly
        async with replicas(r), gateway(_world(r), cfg, clock) as (_gw, c):
            k2 = {"authorization": "Bearer k-alice2"}
            assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
            assert (await c.post("/v1/chat/completions", json=chat(), headers=k2)).status_code == 200
            third = await c.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer k-alice3"})
            assert third.status_code == 429 and "owner alice" in third.json()["error"]["message"]
            assert third.headers["retry-after"] == "1"
            clock.advance(1.0)
            # k-alice3 was refused by the owner's bucket: its own still holds its token.
            assert (await c.post("/v1/chat/completions", json=chat(),
                                 headers={"authorization": "Bearer k-alice3"})).status_code == 200
            assert r.calls == 3
    run(scenario())


def test_key_concurrency_and_the_owner_ceiling_over_all_its_keys() -> None:
    async def scenario() -> None:
        r = FakeReplica("a", mode="sse", events=1)
        r.gate = asyncio.Queue()
        cfg = GatewaySettings(key_concurrency=1, owner_concurrency=2)
        async with replicas(r), gateway(_world(r), cfg) as (gw, c):
            first = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat(stream=True)))
            await eventually(lambda: r.calls == 1)
            same_key = await c.post("/v1/chat/completions", json=chat())
            assert same_key.status_code == 429 and same_key.headers["retry-after"] == "1"
            assert "this API key" in same_key.json()["error"]["message"]
            k2 = {"authorization": "Bearer k-alice2"}
            second = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat(stream=True), headers=k2))
            await eventually(lambda: r.calls == 2)
            third = await c.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer k-alice3"})
            assert third.status_code == 429 and "owner alice" in third.json()["error"]["message"]
            r.gate.put_nowait(None)
            r.gate.put_nowait(None)
            r.gate.put_nowait(None)
            assert [(await first).status_code, (await second).status_code] == [200, 200]
            await eventually(lambda: gw.limiter.key_active == {} and gw.limiter.owner_active == {})
            assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
    run(scenario())


def test_body_and_max_tokens_caps_are_4xx_before_any_replica_is_called() -> None:
    async def scenario() -> None:
        r = FakeReplica("a")
        cfg = GatewaySettings(max_body_bytes=2000, max_tokens=100)
        async with replicas(r), gateway(_world(r), cfg) as (_gw, c):
            big = await c.post("/v1/chat/completions", json=chat(padding="x" * 5000))
            assert big.status_code == 413 and "at most 2000 bytes" in big.json()["error"]["message"]

            async def chunked() -> object:
                for _ in range(5):
                    yield b" " * 1000
            streamed = await c.post("/v1/chat/completions", content=chunked(),
                                    headers={"content-type": "application/json"})
            assert streamed.status_code == 413, "a body without a length is capped as it arrives"
            over = await c.post("/v1/chat/completions", json=chat(max_tokens=101))
            assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
            over2 = await c.post("/v1/chat/completions", json=chat(max_completion_tokens=1000))
            assert over2.status_code == 400 and over2.json()["error"]["param"] == "max_completion_tokens"
            assert (await c.post("/v1/chat/completions", json=chat(max_tokens=100))).status_code == 200
            assert r.calls == 1
    run(scenario())
