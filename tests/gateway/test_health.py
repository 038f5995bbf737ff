"""Passive health through the real gateway: ejection, re-admission, and a hung replica bounded per try."""

from __future__ import annotations

from dedicate.settings import GatewaySettings
from tests.gateway.fakes import (
    FakeClock,
    FakeReplica,
    World,
    chat,
    gateway,
    make_endpoint,
    make_replica,
    replicas,
    run,
)


def _world(*fakes: FakeReplica) -> World:
    ep = make_endpoint()
    return World([ep], [make_replica(f"r-{f.name}", ep, f.url) for f in fakes])


async def _until_called(c: object, fake: FakeReplica, calls: int, limit: int = 200) -> int:
    """Send requests until ``fake`` has had ``calls`` calls; each must succeed. Returns how many were sent."""
    sent = 0
    while fake.calls < calls:
        r = await c.post("/v1/chat/completions", json=chat())  # type: ignore[attr-defined]
        assert r.status_code == 200
        sent += 1
        assert sent <= limit, "the failing replica was never chosen"
    return sent


def test_a_replica_failing_in_a_row_is_ejected_then_tried_again_once_its_time_is_up() -> None:
    async def scenario() -> None:
        bad, good = FakeReplica("bad", mode="status", status=502), FakeReplica("good")
        clock = FakeClock()
        cfg = GatewaySettings(failures_to_eject=3, ejection_base_s=10, ejection_max_s=100)
        async with replicas(bad, good), gateway(_world(bad, good), cfg, clock) as (gw, c):
            sent = await _until_called(c, bad, 3)
            assert gw.table.states["r-bad"].ejected_until == clock.t + 10
            for _ in range(30):
                assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
            assert bad.calls == 3, "ejected: no calls for 10 s"
            assert good.calls == sent + 30, "every request answered by the good replica, exactly once"
            clock.advance(10)
            sent2 = await _until_called(c, bad, 4)
            assert gw.table.states["r-bad"].ejected_until == clock.t + 20, "ejected again at once, for twice as long"
            for _ in range(30):
                assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
            assert bad.calls == 4
            assert good.calls == sent + 30 + sent2 + 30
            bad.mode = "ok"
            clock.advance(20)
            await _until_called(c, bad, 5)
            s = gw.table.states["r-bad"]
            assert (s.consecutive_failures, s.ejections) == (0, 0), "a success clears the record"
    run(scenario())


def test_every_replica_failing_never_ejects_them_all() -> None:
    async def scenario() -> None:
        fakes = [FakeReplica(f"b{i}", mode="status", status=500) for i in range(3)]
        clock = FakeClock()
        cfg = GatewaySettings(failures_to_eject=1, ejection_base_s=100, max_tries=1)
        async with replicas(*fakes), gateway(_world(*fakes), cfg, clock) as (gw, c):
            for n in range(1, 21):
                r = await c.post("/v1/chat/completions", json=chat())
                assert r.status_code == 500
                assert sum(f.calls for f in fakes) == n, "every request still reaches a replica"
            ejected = [s for s in gw.table.states.values() if s.ejected_until > clock.t]
            assert len(ejected) == 2
    run(scenario())


def test_a_hung_replica_is_bounded_by_the_per_try_timeout_and_the_request_goes_elsewhere() -> None:
    async def scenario() -> None:
        hung, good = FakeReplica("hung", mode="hang"), FakeReplica("good")
        # The per-try timeout also bounds the good replica: 1 s leaves it room on a busy machine.
        cfg = GatewaySettings(try_timeout_s=1.0, failures_to_eject=2, ejection_base_s=1000)
        async with replicas(hung, good), gateway(_world(hung, good), cfg) as (gw, c):
            sent = await _until_called(c, hung, 2)
            for _ in range(20):
                r = await c.post("/v1/chat/completions", json=chat())
                assert r.status_code == 200 and r.json()["replica"] == "good"
            assert hung.calls == 2, "ejected after two timeouts"
            assert good.calls == sent + 20
            assert gw.table.states["r-hung"].errors == 2
            assert gw.table.states["r-hung"].in_flight == 0
            assert gw.signals.endpoints["endpoint-alice-chat"].errors == 0
    run(scenario())
