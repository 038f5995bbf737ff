"""The hardware queue policy: FCFS minimums, replacements first, surplus yields to minimums."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dedicate.scheduler.placement import FleetIndex, NodeView
from dedicate.scheduler.queue import Demand, SurplusReplica, plan

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fleet(*nodes: tuple[str, int, int]) -> FleetIndex:
    """(name, total H100 slots, free slots counted from 0)."""
    return FleetIndex.build(NodeView(n, "h100-80gb", total, tuple(range(total - free, total)))
                            for n, total, free in nodes)


def demand(eid: str, *, gpus: int = 1, min_r: int = 1, desired: int | None = None, active: int = 0,
           queued_at: int | None = 0, surplus: tuple[SurplusReplica, ...] = (), owner: str = "o") -> Demand:
    return Demand(eid, owner, "h100-80gb", gpus, min_r, desired if desired is not None else min_r, active,
                  None if queued_at is None else T0 + timedelta(seconds=queued_at), T0, surplus)


def test_a_minimum_that_fits_is_placed_all_at_once() -> None:
    p = plan(fleet(("a", 8, 8)), [demand("e1", gpus=2, min_r=3)])
    assert [x.node for x in p.placements["e1"]] == ["a", "a", "a"]
    assert p.queued == {}


def test_a_minimum_that_does_not_fit_whole_places_nothing_and_waits_at_position_one() -> None:
    p = plan(fleet(("a", 8, 8)), [demand("e1", gpus=4, min_r=3)])
    assert "e1" not in p.placements
    assert p.queued == {"e1": 3} and p.positions == {"e1": 1}
    assert "availability limited" in p.reasons["e1"]


def test_minimums_are_strictly_first_come_first_served() -> None:
    # e1 came first and needs 8; e2 needs 1 and would fit, but must wait behind e1.
    p = plan(fleet(("a", 8, 4)), [demand("e2", min_r=1, queued_at=5), demand("e1", gpus=8, queued_at=1)])
    assert p.placements == {}
    assert p.positions == {"e1": 1, "e2": 2}


def test_a_lost_replica_within_the_minimum_outranks_the_queue() -> None:
    p = plan(fleet(("a", 8, 1)), [demand("queued", queued_at=0), demand("lost", active=1, min_r=2, queued_at=None)])
    assert list(p.placements) == ["lost"]
    assert p.positions == {"queued": 1}


def test_surplus_is_placed_as_far_as_capacity_allows_and_the_rest_is_queued() -> None:
    p = plan(fleet(("a", 4, 3)), [demand("e1", min_r=1, desired=4, active=1, queued_at=None)])
    assert len(p.placements["e1"]) == 3
    assert p.queued == {}


def test_low_availability_runs_with_what_fits_once_the_minimum_fits() -> None:
    p = plan(fleet(("a", 4, 4)), [demand("e1", min_r=2, desired=6)])
    assert len(p.placements["e1"]) == 4
    assert p.queued == {"e1": 2}
    assert "availability limited" in p.reasons["e1"]


def test_surplus_of_others_yields_when_that_lets_the_head_fit() -> None:
    other = demand("rich", min_r=1, desired=4, active=4, queued_at=None, surplus=(
        SurplusReplica("r3", "a", (3,)), SurplusReplica("r2", "a", (2,)), SurplusReplica("r1", "a", (1,))))
    p = plan(fleet(("a", 4, 0)), [other, demand("head", gpus=2, queued_at=1)])
    assert [r for r, _ in p.drains] == ["r3", "r2"], "the fewest, least valuable first"
    assert all(for_ep == "head" for _, for_ep in p.drains)
    assert "head" not in p.placements, "placed once the drained slots are free"
    assert p.positions == {"head": 1}


def test_surplus_does_not_yield_when_even_all_of_it_would_not_let_the_head_fit() -> None:
    other = demand("rich", min_r=3, desired=4, active=4, queued_at=None, surplus=(SurplusReplica("r4", "a", (3,)),))
    p = plan(fleet(("a", 4, 0)), [other, demand("head", gpus=4, queued_at=1)])
    assert p.drains == []


def test_no_surplus_is_placed_while_a_minimum_waits_in_the_pool() -> None:
    p = plan(fleet(("a", 8, 2)), [demand("head", gpus=4, queued_at=1),
                                   demand("grow", min_r=1, desired=3, active=1, queued_at=None)])
    assert "grow" not in p.placements
    assert p.queued["grow"] == 2 and "held for queued minimums" in p.reasons["grow"]


def test_surplus_stops_at_the_owners_gpu_quota() -> None:
    p = plan(fleet(("a", 8, 8)), [demand("e1", min_r=1, desired=5, active=1, queued_at=None, owner="bob")],
             quotas={"bob": 3}, usage={"bob": 1})
    assert len(p.placements["e1"]) == 2
    assert "quota" in p.reasons["e1"]


def test_pools_are_independent() -> None:
    idx = FleetIndex.build([NodeView("h", "h100-80gb", 1, ()), NodeView("g", "a100-80gb", 1, (0,))])
    blocked = demand("h-ep", queued_at=0)
    other = Demand("a-ep", "o", "a100-80gb", 1, 1, 1, 0, T0 + timedelta(seconds=9), T0)
    p = plan(idx, [blocked, other])
    assert list(p.placements) == ["a-ep"] and p.positions == {"h-ep": 1}


def test_the_index_and_the_full_scan_agree_on_feasibility() -> None:
    from dedicate.scheduler.placement import NoPlacement, place

    nodes = [NodeView(f"n{i}", "h100-80gb", 8, tuple(range(i % 9 if i % 9 <= 8 else 8))) for i in range(30)]
    idx = FleetIndex.build(nodes)
    for count in (1, 2, 4, 8):
        a, b = place(nodes, "h100-80gb", count), idx.find("h100-80gb", count)
        assert isinstance(a, NoPlacement) == isinstance(b, NoPlacement)
        if not isinstance(a, NoPlacement) and not isinstance(b, NoPlacement):
            free = {n.name: len(n.free_slots) for n in nodes}
            assert free[a.node] == free[b.node], "both choose a node with the fewest free slots that fit"


def test_only_the_surplus_that_is_needed_yields_even_across_shapes() -> None:
    one_gpu = demand("small", min_r=1, desired=2, active=2, queued_at=None,
                     surplus=(SurplusReplica("a2", "a", (3,)),))
    two_gpu = Demand("big", "o", "h100-80gb", 2, 1, 2, 2, None, T0, (SurplusReplica("b1", "a", (0, 1)),))
    p = plan(fleet(("a", 4, 0)), [one_gpu, two_gpu, demand("head", gpus=2, queued_at=1)])
    assert [r for r, _ in p.drains] == ["b1"], "a2 alone frees one slot, b1 alone frees two: b1 is enough"


def test_a_minimum_no_node_could_hold_does_not_block_the_pool() -> None:
    p = plan(fleet(("a", 4, 4)), [demand("huge", gpus=8, queued_at=0), demand("next", gpus=1, queued_at=1)])
    assert list(p.placements) == ["next"]
    assert "no node has 8" in p.reasons["huge"]
