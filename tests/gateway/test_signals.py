"""Signals per replica and endpoint, token usage, the store write, /metrics text, and the key cache."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from dedicate.control.auth import Principal
from dedicate.domain.errors import Unauthorized
from dedicate.gateway.keys import KeyCache
from dedicate.gateway.signals import Signals, prometheus, usage_in
from dedicate.store.db import make_engine, migrate
from dedicate.store.repos import Store
from tests.gateway.fakes import (
    T0,
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


def test_usage_is_read_from_the_last_usage_object_only() -> None:
    body = (b'{"choices":[{"message":{"content":"say \\"prompt_tokens\\": 99, \\"completion_tokens\\": 99"}}],'
            b'"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,'
            b'"prompt_tokens_details":{"cached_tokens":0}}}')
    assert usage_in(body) == (12, 5)
    assert usage_in(b'data: {"choices":[]}\n\ndata: [DONE]\n\n') is None


def test_counts_per_replica_and_endpoint_with_tokens_from_json_and_streams(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = FakeReplica("a"), FakeReplica("b", mode="sse", events=4)
        ep = make_endpoint()
        clock = FakeClock()
        world = World([ep], [])
        async with replicas(a, b), gateway(world, clock=clock) as (gw, c):
            world.replicas = [make_replica("r-a", ep, a.url)]
            for _ in range(3):
                assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
            world.replicas = [make_replica("r-b", ep, b.url)]
            await gw.table.refresh()
            clock.advance(5)
            plain = await c.post("/v1/chat/completions", json=chat(stream=True))
            assert '"choices": []' not in plain.text, "the usage the gateway asked for is dropped"
            asked = await c.post("/v1/chat/completions",
                                 json=chat(stream=True, stream_options={"include_usage": True}))
            assert '"choices": []' in asked.text, "a client that asked for usage gets it"
            assert b.bodies[0]["stream_options"] == {"include_usage": True}
            assert b.bodies[1]["stream_options"] == {"include_usage": True}
            await eventually(lambda: gw.signals.endpoints[ep.id].in_flight == 0)

            ra, rb = gw.table.states.get("r-a"), gw.table.states["r-b"]
            assert ra is None, "a replica gone from the table, with nothing running there, is forgotten"
            assert (rb.requests, rb.errors, rb.tokens_in, rb.tokens_out, rb.in_flight) == (2, 0, 10, 8, 0)
            e = gw.signals.endpoints[ep.id]
            assert (e.requests, e.errors, e.tokens_in, e.tokens_out, e.in_flight, e.queued) == (5, 0, 31, 17, 0, 0)
            assert e.last_request == clock.t

            store = Store(make_engine(f"sqlite:///{tmp_path / 's.db'}"))
            migrate(store.engine)
            store.insert_endpoint(ep, ("created", "test"))
            now = T0 + timedelta(days=3, hours=1)
            rows, deltas = gw.signals.collect(now, clock.t + 2)
            assert deltas == [(ep.id, "alice", "2026-01-04", 5, 31, 17)]
            store.write_signals("gw-1", now, rows, deltas)
            seen = store.signals(now)[ep.id]
            assert (seen.requests_total, seen.tokens_in_total, seen.tokens_out_total, seen.in_flight,
                    seen.queued) == (5, 31, 17, 0, 0)
            assert seen.peak_load == 1, "the requests ran one at a time"
            assert seen.last_request_at == now - timedelta(seconds=2)
            assert store.get_endpoint(ep.id).last_request_at == now - timedelta(seconds=2)  # type: ignore[union-attr]
            assert store.token_usage("alice", "2026-01-01", "2026-01-31") == {ep.id: (5, 31, 17)}
            assert gw.signals.collect(now, clock.t)[1] == [], "deltas are drained once written"

            # prometheus-client writes values as floats and labels sorted by name
            lines = prometheus(gw.signals, gw.table.states.values(), clock.t, 1e9).splitlines()
            assert f'dedicate_gateway_endpoint_requests_total{{endpoint="{ep.id}",name="alice/chat",' \
                   'owner="alice"} 5.0' in lines
            assert 'dedicate_gateway_replica_tokens_out_total{endpoint="endpoint-alice-chat",replica="r-b"} 8.0' \
                   in lines
            assert "# TYPE dedicate_gateway_endpoint_queued gauge" in lines
            assert "# TYPE dedicate_gateway_endpoint_requests_total counter" in lines
    run(scenario())


def test_metric_labels_are_escaped() -> None:
    s = Signals()
    ep = s.endpoint("e1", 'alice/"chat"\\\nv2', "alice")
    ep.requests = 2
    ep.last_request = 10.0
    lines = prometheus(s, [], 12.0, 1_700_000_000.0).splitlines()
    assert 'dedicate_gateway_endpoint_requests_total{endpoint="e1",name="alice/\\"chat\\"\\\\\\nv2",' \
           'owner="alice"} 2.0' in lines
    assert 'dedicate_gateway_endpoint_last_request_timestamp_seconds{endpoint="e1",name="alice/\\"chat\\"' \
           '\\\\\\nv2",owner="alice"} 1.699999998e+09' in lines


def test_a_burst_between_two_writes_is_reported_as_the_peak_then_forgotten() -> None:
    s = Signals()
    ep = s.endpoint("e1", "alice/chat", "alice")
    for _ in range(3):
        ep.admitted()
    ep.held()
    ep.held()
    ep.queued -= 2  # the held ones found a replica and went in flight, and all but one finished
    ep.admitted()
    ep.admitted()
    ep.in_flight -= 4
    rows, _ = s.collect(T0, 0.0)
    assert (rows[0].in_flight, rows[0].queued, rows[0].peak_load) == (1, 0, 5)
    rows, _ = s.collect(T0, 0.0)
    assert rows[0].peak_load == 1, "the next write starts from what is in flight when the last was written"


def test_failed_usage_writes_are_kept_for_the_next_write() -> None:
    s = Signals()
    ep = s.endpoint("e1", "alice/chat", "alice")
    s.add_usage(ep, 3, 4)
    _, deltas = s.collect(T0, 0.0)
    s.restore(deltas)
    s.add_usage(ep, 1, 1)
    assert s.collect(T0, 0.0)[1] == [("e1", "alice", "2026-01-01", 2, 4, 5)]


def test_the_key_cache_answers_from_memory_for_at_most_its_ttl_and_forgets_a_revoked_key() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        calls: list[str | None] = []
        revoked: set[str] = set()

        def lookup(header: str | None) -> Principal:
            calls.append(header)
            if header in revoked or header is None:
                raise Unauthorized("revoked")
            return Principal("alice", False, "key_1")

        cache = KeyCache(lookup, clock, ttl_s=5.0)
        assert cache.ttl_s == 1.0, "never more than a second"
        results = await asyncio.gather(*[cache.principal("Bearer k1") for _ in range(10)])
        assert {p.owner for p in results} == {"alice"} and len(calls) == 1, "concurrent misses share one lookup"
        clock.advance(0.4)
        await cache.principal("Bearer k1")
        assert len(calls) == 1
        revoked.add("Bearer k1")  # revoked in another process: fails once the cached answer is a second old
        clock.advance(0.7)
        with pytest.raises(Unauthorized):
            await cache.principal("Bearer k1")
        assert len(calls) == 2
        revoked.clear()
        clock.advance(1.1)
        await cache.principal("Bearer k1")
        revoked.add("Bearer k1")
        cache.forget("key_1")  # revoked through this process: fails at once
        with pytest.raises(Unauthorized):
            await cache.principal("Bearer k1")
    run(scenario())


def test_the_injected_usage_chunk_is_dropped_even_when_events_are_split_across_chunks() -> None:
    from dedicate.gateway.proxy import _drop_usage_events

    stream = (b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
              b"data: [DONE]\n\n")
    for cut in range(1, len(stream)):
        out, pending = _drop_usage_events(stream[:cut])
        more, pending = _drop_usage_events(pending + stream[cut:])
        assert out + more + pending == (b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
                                        b"data: [DONE]\n\n"), cut


def test_the_gateway_table_of_the_config_file_is_read_and_checked(tmp_path: Path) -> None:
    from dedicate.settings import ConfigError, load_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text("[gateway]\nhold_s = 5\nkey_rps = 2.5\nqueue_size = 10\ninject_usage = false\n")
    g = load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path)}).gateway
    assert (g.hold_s, g.key_rps, g.queue_size, g.inject_usage, g.max_tries) == (5.0, 2.5, 10, False, 3)
    for bad, words in (("holdd_s = 1", "unknown setting"), ("key_cache_ttl_s = 2", "at most 1 second"),
                       ("max_tries = 0", "at least 1"), ("hold_s = -1", "must not be negative")):
        cfg.write_text(f"[gateway]\n{bad}\n")
        with pytest.raises(ConfigError, match=words):
            load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path)})


def test_finished_requests_count_in_their_deployments_minute_and_old_minutes_are_let_go() -> None:
    from datetime import UTC, datetime, timedelta

    from dedicate.gateway.signals import MINUTES_KEPT, Signals

    s = Signals()
    t = datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC)
    s.observe("endpoint-a", t, 200, 15.0, 120.0, (7, 3))
    s.observe("endpoint-a", t + timedelta(seconds=10), 503, None, 2.0, None)
    s.observe("endpoint-a", t + timedelta(minutes=1), 200, 10.0, 50.0, (1, 1))
    rows = {m.minute.minute: m for m in s.collect_minutes(t)}
    first = rows[0]
    assert (first.requests, first.failures, first.tokens_in, first.tokens_out) == (2, 1, 7, 3)
    assert first.statuses == {"200": 1, "503": 1} and sum(first.ttft) == 1 and sum(first.latency) == 2
    assert rows[1].requests == 1
    later = t + timedelta(minutes=MINUTES_KEPT + 2)
    assert len(s.collect_minutes(later)) == 2, "written once more"
    assert s.collect_minutes(later) == [], "then forgotten"
