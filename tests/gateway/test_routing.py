"""The choice among replicas and the health record: pure, no I/O."""

from __future__ import annotations

import random

from dedicate.gateway.health import HealthPolicy
from dedicate.gateway.routing import ReplicaState, Route, RoutingTable, Target
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

    async def run() -> Route | None:
        await table.refresh()  # a fresh snapshot, without the endpoint
        endpoints.append(make_endpoint("alice/new"))
        return await table.route("alice/new")

    route = asyncio.run(run())
    assert route is not None and route.endpoint.name == "alice/new"
