"""The choice among replicas and the health record: pure, no I/O."""

from __future__ import annotations

import random

from dedicate.gateway.health import HealthPolicy
from dedicate.gateway.routing import ReplicaState, Route, RoutingTable, Target, Unrouted
from tests.gateway.fakes import FakeClock, make_endpoint


def _table(clock: FakeClock, seed: int = 3) -> RoutingTable:
    return RoutingTable(lambda: ([], []), rng=random.Random(seed), monotonic=clock,
                        health=HealthPolicy(failures_to_eject=3, base_s=1.0, max_s=8.0))


def _targets(n: int) -> tuple[Target, ...]:
    return tuple(Target(f"r{i}", f"http://127.0.0.1:{9000 + i}", "tok", ReplicaState(f"r{i}", "e"))
                 for i in range(n))


def test_two_choices_never_pick_the_busier_of_the_pair() -> None:
    table = _table(FakeClock())
    targets = _targets(2)
    targets[0].state.in_flight = 5
    picks = [table.choose(targets) for _ in range(200)]
    assert {t.replica_id for t in picks if t is not None} == {"r1"}


def test_two_choices_spread_equal_load_over_every_replica() -> None:
    table = _table(FakeClock())
    targets = _targets(4)
    counts = {t.replica_id: 0 for t in targets}
    for _ in range(400):
        t = table.choose(targets)
        assert t is not None
        counts[t.replica_id] += 1
        t.state.in_flight += 1  # load builds up: the least loaded keep winning
    assert max(t.state.in_flight for t in targets) - min(t.state.in_flight for t in targets) <= 2
    assert sum(counts.values()) == 400


def test_choose_skips_excluded_and_returns_none_when_nothing_is_left() -> None:
    table = _table(FakeClock())
    targets = _targets(3)
    assert all(table.choose(targets, {"r0", "r1"}).replica_id == "r2" for _ in range(20))  # type: ignore[union-attr]
    assert table.choose(targets, {"r0", "r1", "r2"}) is None
    assert table.choose(()) is None


def test_a_failing_replica_is_ejected_for_a_growing_time_and_readmitted_by_a_success() -> None:
    clock = FakeClock()
    table = _table(clock)
    targets = _targets(2)
    route = Route(make_endpoint(), targets)
    bad = targets[0]
    assert [table.record_failure(bad, route) for _ in range(3)] == [False, False, True]
    assert bad.state.ejected_until == clock.t + 1.0
    assert all(table.choose(targets) is targets[1] for _ in range(50))
    clock.advance(1.0)  # time is up: tried again; one more failure ejects at once, twice as long
    assert table.record_failure(bad, route) is True
    assert bad.state.ejected_until == clock.t + 2.0
    clock.advance(2.0)
    assert table.record_failure(bad, route) is True
    assert bad.state.ejected_until == clock.t + 4.0
    clock.advance(4.0)
    assert table.record_failure(bad, route) is True
    assert bad.state.ejected_until == clock.t + 8.0, "capped at max_s"
    clock.advance(8.0)
    assert table.record_failure(bad, route) is True
    assert bad.state.ejected_until == clock.t + 8.0
    clock.advance(8.0)
    table.record_success(bad)
    assert (bad.state.consecutive_failures, bad.state.ejections) == (0, 0)
    assert [table.record_failure(bad, route) for _ in range(3)] == [False, False, True]
    assert bad.state.ejected_until == clock.t + 1.0, "a success starts the growth over"


def test_the_last_healthy_replica_is_never_ejected() -> None:
    clock = FakeClock()
    table = _table(clock)
    targets = _targets(3)
    route = Route(make_endpoint(), targets)
    for t in targets:
        for _ in range(10):
            table.record_failure(t, route)
    ejected = [t for t in targets if t.state.ejected_until > clock.t]
    assert len(ejected) == 2
    healthy = next(t for t in targets if t not in ejected)
    assert all(table.choose(targets) is healthy for _ in range(50))


def test_when_every_candidate_is_ejected_all_are_candidates_again() -> None:
    clock = FakeClock()
    table = _table(clock)
    targets = _targets(2)
    for t in targets:
        t.state.ejected_until = clock.t + 10
    assert {table.choose(targets).replica_id for _ in range(100)} == {"r0", "r1"}  # type: ignore[union-attr]


def test_an_endpoint_created_just_after_a_snapshot_is_routed_at_once() -> None:
    """A miss asks a read begun after it, not one a few ms old: else a call right after a create says 404."""
    import asyncio

    endpoints = []
    table = RoutingTable(lambda: (list(endpoints), []), rng=random.Random(1))

    async def run() -> Route | Unrouted | None:
        await table.refresh()  # a fresh snapshot, without the endpoint
        endpoints.append(make_endpoint("alice/new"))
        return await table.route("alice/new")

    route = asyncio.run(run())
    assert isinstance(route, Route) and route.endpoint.name == "alice/new"


def _split_table(split: list[tuple[str, float]], ready: dict[str, int], *,
                 stopped: frozenset[str] = frozenset()) -> RoutingTable:
    """A route ``alice/chat`` over deployments alice/chat/<name>, each with ``ready[name]`` ready replicas."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from dedicate.domain.endpoints import Intent
    from dedicate.domain.routes import Route as Named
    from dedicate.domain.routes import SplitEntry, Visibility
    from tests.gateway.fakes import make_replica

    eps = [make_endpoint(f"alice/chat/{n}") for n in ready]
    eps = [replace(e, id=f"endpoint-{n}", intent=Intent.STOP) if n in stopped else replace(e, id=f"endpoint-{n}")
           for e, n in zip(eps, ready, strict=True)]
    replicas = [make_replica(f"{e.id}-r{i}", e, f"http://127.0.0.1:{9000 + k * 10 + i}")
                for k, (e, n) in enumerate(zip(eps, ready.values(), strict=True)) for i in range(n)]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    named = Named("ep_1", "alice", "alice/chat", Visibility.PRIVATE,
                  tuple(SplitEntry(f"endpoint-{n}", w) for n, w in split), 1, t0, t0)
    return RoutingTable(lambda: (eps, replicas), rng=random.Random(7), load_routes=lambda: [named])


def _shares(table: RoutingTable, n: int = 2000) -> dict[str, int]:
    import asyncio

    async def run() -> dict[str, int]:
        counts: dict[str, int] = {}
        for _ in range(n):
            got = await table.route("alice/chat")
            assert isinstance(got, Route)
            counts[got.endpoint.name] = counts.get(got.endpoint.name, 0) + 1
        return counts

    return asyncio.run(run())


def test_a_routes_requests_go_to_its_deployments_by_weight_times_ready_replicas() -> None:
    counts = _shares(_split_table([("blue", 3), ("green", 1)], {"blue": 1, "green": 1}))
    assert 0.70 < counts["alice/chat/blue"] / 2000 < 0.80
    counts = _shares(_split_table([("blue", 1), ("green", 1)], {"blue": 3, "green": 1}))
    assert 0.70 < counts["alice/chat/blue"] / 2000 < 0.80, "twice the replicas, twice the share"


def test_weight_zero_takes_no_new_requests_and_a_deployment_with_none_ready_waits_its_turn() -> None:
    assert set(_shares(_split_table([("blue", 1), ("green", 0)], {"blue": 1, "green": 2}), 200)) == \
        {"alice/chat/blue"}
    assert set(_shares(_split_table([("blue", 1), ("green", 1)], {"blue": 0, "green": 1}), 200)) == \
        {"alice/chat/green"}, "a ready deployment wins over one still starting"
    none_ready = _shares(_split_table([("blue", 1), ("green", 1)], {"blue": 0, "green": 0}), 400)
    assert set(none_ready) == {"alice/chat/blue", "alice/chat/green"}, "by weight alone, to wait for a replica"
    assert set(_shares(_split_table([("blue", 1), ("green", 1)], {"blue": 0, "green": 1}, stopped=frozenset(
        {"green"})), 200)) == {"alice/chat/blue"}, "a deployment told to stop is the last choice"


def test_a_split_with_no_weight_above_zero_leaves_the_name_unrouted() -> None:
    import asyncio

    for split in ([], [("blue", 0.0)]):
        got = asyncio.run(_split_table(split, {"blue": 1}).route("alice/chat"))
        assert isinstance(got, Unrouted) and got.owner == "alice" and got.id == "ep_1"
    direct = asyncio.run(_split_table([], {"blue": 1}).route("alice/chat/blue"))
    assert isinstance(direct, Route), "a deployment's own name still reaches it"
