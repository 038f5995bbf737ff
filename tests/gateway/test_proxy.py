"""Routing, streaming and retries through the real gateway to fake replicas on loopback, with exact counts."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from dedicate.gateway import upstream
from dedicate.settings import GatewaySettings
from tests.gateway.fakes import (
    FakeReplica,
    ResettingReplica,
    World,
    chat,
    eventually,
    failing_probes,
    free_port,
    gateway,
    make_endpoint,
    make_replica,
    replicas,
    run,
    stopping,
)


def _world(*fakes: FakeReplica | ResettingReplica, urls: tuple[str, ...] = ()) -> World:
    ep = make_endpoint()
    reps = [make_replica(f"r-{i}", ep, f.url) for i, f in enumerate(fakes)]
    reps += [make_replica(f"r-x{i}", ep, url) for i, url in enumerate(urls)]
    return World([ep], reps)


def _in_flight(gw: object) -> dict[str, int]:
    return {rid: s.in_flight for rid, s in gw.table.states.items()}  # type: ignore[attr-defined]


def test_a_replica_gets_its_own_token_never_the_clients_api_key() -> None:
    async def scenario() -> None:
        r = FakeReplica("a")
        async with replicas(r), gateway(_world(r)) as (_gw, c):
            assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
            assert (await c.post("/v1/chat/completions", json=chat(stream=True))).status_code == 200
        assert r.authorizations == ["Bearer rtok", "Bearer rtok"], "the client's key (k-alice) stays at the gateway"
    run(scenario())


def test_least_outstanding_sends_everything_to_the_idle_replica_while_the_other_is_busy() -> None:
    async def scenario() -> None:
        busy, idle = FakeReplica("busy", mode="sse"), FakeReplica("idle")
        busy.gate = asyncio.Queue()
        async with replicas(busy, idle), gateway(_world(busy, idle)) as (gw, c):
            # the first request of a pair of idle replicas may go to either: make "busy" hold one
            while busy.calls == 0:
                stream = c.stream("POST", "/v1/chat/completions", json=chat(stream=True))
                held = await stream.__aenter__()
                if busy.calls == 0:
                    await held.aread()
                    await stream.__aexit__(None, None, None)
            assert _in_flight(gw)["r-0"] == 1
            before = idle.calls
            for _ in range(20):
                r = await c.post("/v1/chat/completions", json=chat())
                assert r.status_code == 200 and r.json()["replica"] == "idle"
            assert idle.calls == before + 20 and busy.calls == 1
            for _ in range(busy.events):
                busy.gate.put_nowait(None)
            await held.aread()
            await stream.__aexit__(None, None, None)
            await eventually(lambda: _in_flight(gw) == {"r-0": 0, "r-1": 0})
    run(scenario())


def test_a_stream_passes_through_chunk_by_chunk_without_waiting_for_the_end() -> None:
    async def scenario() -> None:
        r = FakeReplica("a", mode="sse", events=3)
        r.gate = asyncio.Queue()
        async with replicas(r), gateway(_world(r)) as (gw, c):
            async with c.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                chunks = resp.aiter_raw()
                seen = b""
                for i in range(3):
                    r.gate.put_nowait(None)  # the replica may send chunk i only now
                    while f'"t{i}"'.encode() not in seen:
                        seen += await chunks.__anext__()
                    assert r.sent == [i + 1], "the client has chunk i before the replica sent chunk i+1"
                rest = b"".join([c async for c in chunks])
            assert (seen + rest).endswith(b"data: [DONE]\n\n")
            assert b'"choices": []' not in seen + rest, "the usage chunk the gateway asked for is not shown"
            assert r.calls == 1
            await eventually(lambda: _in_flight(gw) == {"r-0": 0})
    run(scenario())


def test_the_client_going_away_aborts_the_replica_request_and_frees_the_slot() -> None:
    async def scenario() -> None:
        r = FakeReplica("a", mode="sse", events=1000)
        r.gate = asyncio.Queue()
        async with replicas(r), gateway(_world(r)) as (gw, c):
            r.gate.put_nowait(None)
            async with c.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp:
                async for chunk in resp.aiter_raw():
                    if b'"t0"' in chunk:
                        break
            await c.aclose()  # the connection goes: the client is gone
            await asyncio.wait_for(r.disconnected.wait(), 20)
            assert r.disconnects == 1 and r.calls == 1
            await eventually(lambda: _in_flight(gw) == {"r-0": 0})
            ep = gw.signals.endpoints["endpoint-alice-chat"]
            assert (ep.in_flight, ep.queued, ep.requests) == (0, 0, 1)
    run(scenario())


def test_the_client_going_away_while_a_replica_thinks_aborts_it_too() -> None:
    async def scenario() -> None:
        r = FakeReplica("a", mode="hang")
        async with replicas(r), gateway(_world(r)) as (gw, c):
            task = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat()))
            await eventually(lambda: r.calls == 1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await c.aclose()
            await asyncio.wait_for(r.disconnected.wait(), 20)
            await eventually(lambda: _in_flight(gw) == {"r-0": 0})
    run(scenario())


def test_connection_refused_is_retried_on_another_replica() -> None:
    async def scenario() -> None:
        good = FakeReplica("good")
        dead_url = f"http://127.0.0.1:{free_port()}"
        async with replicas(good), gateway(_world(good, urls=(dead_url,))) as (gw, c):
            for _ in range(10):
                r = await c.post("/v1/chat/completions", json=chat())
                assert r.status_code == 200 and r.json()["replica"] == "good"
            assert good.calls == 10
            dead = gw.table.states["r-x0"]
            assert dead.requests == dead.errors >= 1
            assert _in_flight(gw) == {"r-0": 0, "r-x0": 0}
    run(scenario())


def test_a_reset_before_the_response_headers_is_retried_on_another_replica() -> None:
    async def scenario() -> None:
        good, resetting = FakeReplica("good"), await ResettingReplica().start()
        try:
            async with replicas(good), gateway(_world(good, resetting)) as (gw, c):
                for _ in range(10):
                    r = await c.post("/v1/chat/completions", json=chat())
                    assert r.status_code == 200 and r.json()["replica"] == "good"
                assert good.calls == 10
                assert resetting.calls == gw.table.states["r-1"].errors >= 1
        finally:
            await resetting.stop()
    run(scenario())


def _waiting_on(stuck: FakeReplica, other: FakeReplica) -> World:
    """``stuck`` ready and ``other`` not ready yet: the first request can only go to ``stuck``."""
    world = _world(stuck, other)
    world.replicas[1] = make_replica("r-1", world.endpoints[0], other.url, ready=False)
    return world


@pytest.mark.parametrize("fault", ["failing its probes", "stopped"])
def test_a_request_waiting_on_a_replica_that_stops_answering_is_tried_on_another_before_its_timeout(
        fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "CHECK_EVERY_S", 0.05)

    async def scenario() -> None:
        stuck, good = FakeReplica("stuck", mode="hang"), FakeReplica("good")
        world = World()
        # a try may wait 120 s for the headers, and the client here 30 s: only giving up on the replica answers
        async with replicas(stuck, good), gateway(world, GatewaySettings(try_timeout_s=120)) as (gw, c):
            world.endpoints, world.replicas = (w := _waiting_on(stuck, good)).endpoints, w.replicas
            request = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat()))
            await eventually(lambda: stuck.calls == 1)
            await asyncio.sleep(0.3)
            assert not request.done(), "a replica that may still answer is waited for"
            ready_good = make_replica("r-1", world.endpoints[0], good.url)
            world.replicas = [failing_probes(world.replicas[0]) if fault == "failing its probes" else ready_good,
                              ready_good][: 2 if fault == "failing its probes" else 1]
            r = await request
            assert r.status_code == 200 and r.json()["replica"] == "good"
            await asyncio.wait_for(stuck.disconnected.wait(), 5)  # its connection cut: it sees its client go
            assert stuck.calls == 1 and good.calls == 1
            assert gw.table.states["r-1"].in_flight == 0
            if "r-0" in gw.table.states:
                assert gw.table.states["r-0"].in_flight == 0 and gw.table.states["r-0"].errors == 1
    run(scenario())


def test_a_draining_replica_is_waited_for_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "CHECK_EVERY_S", 0.05)

    async def scenario() -> None:
        slow, other = FakeReplica("slow", mode="slow"), FakeReplica("other")
        world = World()
        async with replicas(slow, other), gateway(world) as (_, c):
            world.endpoints, world.replicas = (w := _waiting_on(slow, other)).endpoints, w.replicas
            request = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat()))
            await eventually(lambda: slow.calls == 1)
            # scaled down while it works: stopping, still passing its probes, and another replica ready
            world.replicas = [stopping(world.replicas[0]), make_replica("r-1", world.endpoints[0], other.url)]
            await asyncio.sleep(0.5)  # ten checks
            assert not request.done()
            slow.release.set()
            r = await request
            assert r.status_code == 200 and r.json()["replica"] == "slow"
            assert other.calls == 0 and slow.disconnects == 0
    run(scenario())


def test_a_5xx_before_any_byte_is_retried_and_the_client_never_sees_it() -> None:
    async def scenario() -> None:
        good, bad = FakeReplica("good"), FakeReplica("bad", mode="status", status=503)
        async with replicas(good, bad), gateway(_world(good, bad)) as (gw, c):
            for _ in range(10):
                r = await c.post("/v1/chat/completions", json=chat())
                assert r.status_code == 200 and r.json()["replica"] == "good"
            assert good.calls == 10
            assert bad.calls == gw.table.states["r-1"].errors >= 1
            assert gw.signals.endpoints["endpoint-alice-chat"].errors == 0
    run(scenario())


def test_a_4xx_is_passed_through_and_never_retried() -> None:
    async def scenario() -> None:
        a, b = FakeReplica("a", mode="status", status=400), FakeReplica("b", mode="status", status=400)
        async with replicas(a, b), gateway(_world(a, b)) as (gw, c):
            for n in range(1, 6):
                r = await c.post("/v1/chat/completions", json=chat())
                assert r.status_code == 400 and "says 400" in r.json()["error"]["message"]
                assert a.calls + b.calls == n, "exactly one call per request"
            assert all(s.errors == 0 for s in gw.table.states.values())
    run(scenario())


def test_after_the_first_byte_a_failure_is_an_error_event_never_a_retry() -> None:
    async def scenario() -> None:
        cut, good = FakeReplica("cut", mode="cut"), FakeReplica("good", mode="sse")
        async with replicas(cut, good), gateway(_world(cut, good)) as (gw, c):
            good_before = 0
            while cut.calls == 0:  # the first stream may land on either: until one lands on "cut"
                async with c.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp:
                    body = b"".join([x async for x in resp.aiter_raw()])
                if cut.calls == 0:
                    good_before += 1
            assert resp.status_code == 200
            events = [e for e in body.split(b"\n\n") if e]
            assert events[:2] == [b'data: {"n": 0}', b'data: {"n": 1}']
            assert json.loads(events[2].removeprefix(b"data: "))["error"]["code"] == "upstream_error"
            assert len(events) == 3
            assert cut.calls == 1 and good.calls == good_before, "nothing was retried"
            assert gw.table.states["r-0"].errors == 1
            assert gw.signals.endpoints["endpoint-alice-chat"].errors == 1
            await eventually(lambda: _in_flight(gw) == {"r-0": 0, "r-1": 0})
    run(scenario())


def test_retries_are_bounded_and_the_last_5xx_reaches_the_client() -> None:
    async def scenario() -> None:
        fakes = [FakeReplica(f"b{i}", mode="status", status=500) for i in range(4)]
        cfg = GatewaySettings(max_tries=3, failures_to_eject=100)
        async with replicas(*fakes), gateway(_world(*fakes), cfg) as (gw, c):
            r = await c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 500 and "says 500" in r.json()["error"]["message"]
            assert sorted(f.calls for f in fakes) == [0, 1, 1, 1], "three tries, each on another replica"
            assert gw.signals.endpoints["endpoint-alice-chat"].errors == 1
    run(scenario())


def test_no_replica_answering_is_a_503_with_retry_after() -> None:
    async def scenario() -> None:
        urls = tuple(f"http://127.0.0.1:{free_port()}" for _ in range(2))
        async with gateway(_world(urls=urls)) as (gw, c):
            r = await c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "no replica could take the request" in r.json()["error"]["message"]
            assert sum(s.requests for s in gw.table.states.values()) == 2
            assert _in_flight(gw) == {"r-x0": 0, "r-x1": 0}
    run(scenario())


def test_unknown_and_foreign_models_are_404_and_bad_keys_401() -> None:
    async def scenario() -> None:
        a = FakeReplica("a")
        async with replicas(a), gateway(_world(a)) as (_gw, c):
            assert (await c.post("/v1/chat/completions", json=chat("alice/nope"))).status_code == 404
            bob = await c.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer k-bob"})
            assert bob.status_code == 404 and bob.json()["error"]["code"] == "model_not_found"
            admin = await c.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer k-admin"})
            assert admin.status_code == 200
            assert (await c.post("/v1/chat/completions", json=chat(),
                                 headers={"authorization": "Bearer wrong"})).status_code == 401
            async with httpx.AsyncClient(base_url=str(c.base_url)) as anon:
                assert (await anon.post("/v1/chat/completions", json=chat())).status_code == 401
            assert (await c.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
                    ).status_code == 400
            assert (await c.post("/v1/completions", json={"prompt": "x"})).status_code == 400
            assert a.calls == 1
    run(scenario())
