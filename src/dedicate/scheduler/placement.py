"""Placement: which node a replica of a shape goes to, or why none can take it.

Pure: nodes with their free slots in, a placement or a reason out. A replica
of ``N x <gpu>`` needs N free slots of that type on one node (gang placement).
Among nodes that fit, the fullest one wins (bin-packing), so that big shapes
still find an empty node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeView:
    """A node as placement sees it: its type and which slots are free."""

    name: str
    gpu_type: str
    total: int
    free_slots: tuple[int, ...]


@dataclass(frozen=True)
class Placement:
    node: str
    slots: tuple[int, ...]


@dataclass(frozen=True)
class NoPlacement:
    reason: str
    exists: bool  # some node could take this shape if it were empty


def place(nodes: Sequence[NodeView], gpu_type: str, count: int) -> Placement | NoPlacement:
    candidates = [n for n in nodes if n.gpu_type == gpu_type and n.total >= count]
    if not candidates:
        return NoPlacement(f"no node has {count} {gpu_type} slot(s)", exists=False)
    fitting = [n for n in candidates if len(n.free_slots) >= count]
    if not fitting:
        return NoPlacement(f"{gpu_type} availability limited: all {gpu_type} slots are busy", exists=True)
    best = min(fitting, key=lambda n: (len(n.free_slots) - count, n.name))
    return Placement(best.name, tuple(sorted(best.free_slots)[:count]))
