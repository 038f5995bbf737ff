"""Placement: gang placement on one node, bin-packing onto the fullest node that fits."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedicate.scheduler.placement import NodeView, NoPlacement, Placement, headroom, place

H100 = "h100-80gb"
A100 = "a100-80gb"


def node(name: str, gpu_type: str, total: int, busy: Sequence[int] = ()) -> NodeView:
    return NodeView(name, gpu_type, total, tuple(s for s in range(total) if s not in set(busy)))


# fleets -----------------------------------------------------------------------------------------


def one_node_of_8_h100(busy: Sequence[int] = ()) -> list[NodeView]:
    return [node("h100-a", H100, 8, busy)]


def two_4x_h100_and_one_8x_a100() -> list[NodeView]:
    return [node("h100-a", H100, 4), node("h100-b", H100, 4), node("a100-a", A100, 8)]


def fragmented_h100_fleet() -> list[NodeView]:
    """Four 8x H100 nodes with 1, 3, 2 and 3 free slots: 9 free, but at most 3 on one node."""
    return [
        node("h100-a", H100, 8, busy=range(7)),  # free: 7
        node("h100-b", H100, 8, busy=(0, 2, 4, 5, 6)),  # free: 1, 3, 7
        node("h100-c", H100, 8, busy=(1, 2, 3, 4, 5, 6)),  # free: 0, 7
        node("h100-d", H100, 8, busy=(0, 1, 2, 3, 4)),  # free: 5, 6, 7
    ]


def two_nodes_with_two_free_each() -> list[NodeView]:
    return [node("h100-a", H100, 4, busy=(0, 1)), node("h100-b", H100, 4, busy=(2, 3))]


# gang placement ---------------------------------------------------------------------------------


def test_a_replica_fits_an_empty_node() -> None:
    assert place(one_node_of_8_h100(), H100, 8) == Placement("h100-a", tuple(range(8)))


def test_four_free_slots_spread_over_two_nodes_cannot_take_a_4_gpu_replica() -> None:
    decision = place(two_nodes_with_two_free_each(), H100, 4)
    assert isinstance(decision, NoPlacement)
    assert decision.exists is True
    assert "availability limited" in decision.reason
    assert H100 in decision.reason


def test_fragmented_fleet_with_nine_free_slots_cannot_take_a_4_gpu_replica() -> None:
    decision = place(fragmented_h100_fleet(), H100, 4)
    assert isinstance(decision, NoPlacement)
    assert decision.exists is True
    assert "availability limited" in decision.reason


def test_two_gpu_replica_fits_one_of_the_halves() -> None:
    decision = place(two_nodes_with_two_free_each(), H100, 2)
    assert decision == Placement("h100-a", (2, 3))


def test_a_busy_node_gives_limited_availability() -> None:
    decision = place(one_node_of_8_h100(busy=range(8)), H100, 1)
    assert isinstance(decision, NoPlacement)
    assert decision.exists is True


def test_replica_larger_than_any_node_does_not_exist() -> None:
    decision = place(two_4x_h100_and_one_8x_a100(), H100, 8)
    assert isinstance(decision, NoPlacement)
    assert decision.exists is False
    assert decision.reason == "no node has 8 h100-80gb slot(s)"


# no such GPU --------------------------------------------------------------------------------------


def test_no_such_gpu_type_does_not_exist() -> None:
    decision = place(two_4x_h100_and_one_8x_a100(), "b200-192gb", 1)
    assert isinstance(decision, NoPlacement)
    assert decision.exists is False
    assert "b200-192gb" in decision.reason


def test_empty_fleet_does_not_exist() -> None:
    decision = place([], H100, 1)
    assert isinstance(decision, NoPlacement)
    assert decision.exists is False


def test_a_replica_goes_only_to_its_gpu_type() -> None:
    decision = place(two_4x_h100_and_one_8x_a100(), A100, 8)
    assert decision == Placement("a100-a", tuple(range(8)))


# bin-packing --------------------------------------------------------------------------------------


def test_bin_packing_chooses_the_fullest_node_that_fits() -> None:
    decision = place(fragmented_h100_fleet(), H100, 2)
    # h100-b and h100-d have 3 free, h100-c has exactly 2: the fullest that fits.
    assert decision == Placement("h100-c", (0, 7))


def test_bin_packing_prefers_the_node_with_one_free_slot_for_one_gpu() -> None:
    assert place(fragmented_h100_fleet(), H100, 1) == Placement("h100-a", (7,))


def test_ties_between_equally_full_nodes_go_to_the_first_name() -> None:
    decision = place(fragmented_h100_fleet(), H100, 3)
    assert decision == Placement("h100-b", (1, 3, 7))


def test_a_small_replica_leaves_the_empty_node_for_a_big_one() -> None:
    fleet = [node("big", H100, 8), node("half", H100, 8, busy=range(4))]
    assert place(fleet, H100, 2) == Placement("half", (4, 5))


def test_equally_empty_nodes_fill_in_name_order() -> None:
    fleet = list(reversed(two_4x_h100_and_one_8x_a100()))
    assert place(fleet, H100, 4) == Placement("h100-a", (0, 1, 2, 3))


# slots --------------------------------------------------------------------------------------------


def test_slots_chosen_are_free_ones_lowest_first() -> None:
    fleet = one_node_of_8_h100(busy=(0, 2, 3, 6))
    assert place(fleet, H100, 3) == Placement("h100-a", (1, 4, 5))


def test_unsorted_free_slots_are_chosen_in_order() -> None:
    fleet = [NodeView("n", H100, 8, free_slots=(7, 1, 5, 3))]
    assert place(fleet, H100, 2) == Placement("n", (1, 3))


def test_placing_replicas_one_after_another_fills_a_node_without_overlap() -> None:
    fleet = one_node_of_8_h100()
    used: set[int] = set()
    for _ in range(4):
        decision = place(fleet, H100, 2)
        assert isinstance(decision, Placement)
        assert used.isdisjoint(decision.slots)
        used |= set(decision.slots)
        fleet = one_node_of_8_h100(busy=sorted(used))
    assert used == set(range(8))
    assert isinstance(place(fleet, H100, 2), NoPlacement)


@st.composite
def fleets(draw: st.DrawFn) -> list[NodeView]:
    nodes = []
    for i in range(draw(st.integers(0, 6))):
        total = draw(st.sampled_from([1, 2, 4, 8]))
        busy = draw(st.sets(st.integers(0, total - 1)))
        nodes.append(node(f"n{i}", draw(st.sampled_from([H100, A100])), total, sorted(busy)))
    return nodes


@given(fleets(), st.sampled_from([H100, A100]), st.sampled_from([1, 2, 4, 8]))
def test_a_placement_takes_count_free_slots_of_one_node_of_the_type(
    fleet: list[NodeView], gpu_type: str, count: int
) -> None:
    decision = place(fleet, gpu_type, count)
    by_name = {n.name: n for n in fleet}
    if isinstance(decision, Placement):
        chosen = by_name[decision.node]
        assert chosen.gpu_type == gpu_type
        assert len(decision.slots) == count == len(set(decision.slots))
        assert set(decision.slots) <= set(chosen.free_slots)
        fitting = [n for n in fleet if n.gpu_type == gpu_type and len(n.free_slots) >= count]
        assert len(chosen.free_slots) == min(len(n.free_slots) for n in fitting)
    else:
        assert not any(n.gpu_type == gpu_type and len(n.free_slots) >= count for n in fleet)
        assert decision.exists == any(n.gpu_type == gpu_type and n.total >= count for n in fleet)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_h100_replicas_never_land_on_a100_nodes(count: int) -> None:
    decision = place(two_4x_h100_and_one_8x_a100(), H100, count)
    assert isinstance(decision, Placement)
    assert decision.node.startswith("h100")


def test_headroom_counts_whole_replicas_per_node_of_the_pool() -> None:
    nodes = [NodeView("a", "h100", 8, (0, 1, 2)), NodeView("b", "h100", 8, tuple(range(8))),
             NodeView("c", "a100", 8, tuple(range(8)))]
    assert headroom(nodes, "h100", 1) == 11
    assert headroom(nodes, "h100", 2) == 1 + 4  # a's three free slots hold one pair
    assert headroom(nodes, "h100", 8) == 1
    assert headroom(nodes, "l40s", 1) == 0
