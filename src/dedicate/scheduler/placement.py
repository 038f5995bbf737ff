"""Placement: which node a replica of a shape goes to, or why none can take it.

Pure: nodes with their free slots in, a placement or a reason out. A replica
of ``N x <gpu>`` needs N free slots of that type on one node (gang placement).
Among nodes that fit, the fullest one wins (best fit, bin-packing), so that
big shapes still find an empty node.

Two implementations that agree on whether a replica fits and on how full the
chosen node is: :func:`place` scans every node (the reference, and the
benchmark's baseline), and :class:`FleetIndex` keeps nodes bucketed by pool
and free-slot count, so a decision looks at no more buckets than the largest
node has slots, whatever the size of the fleet. Between equally full nodes
the scan picks the first name, the index the node that joined its bucket first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeView:
    """A node as placement sees it: its pool (GPU type) and which slots are free."""

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


def _no_node(gpu_type: str, count: int) -> NoPlacement:
    return NoPlacement(f"no node has {count} {gpu_type} slot(s)", exists=False)


def _busy(gpu_type: str) -> NoPlacement:
    return NoPlacement(f"{gpu_type} availability limited: not enough free {gpu_type} slots on one node",
                       exists=True)


def place(nodes: Sequence[NodeView], gpu_type: str, count: int) -> Placement | NoPlacement:
    """The reference: scan every node."""
    candidates = [n for n in nodes if n.gpu_type == gpu_type and n.total >= count]
    if not candidates:
        return _no_node(gpu_type, count)
    fitting = [n for n in candidates if len(n.free_slots) >= count]
    if not fitting:
        return _busy(gpu_type)
    best = min(fitting, key=lambda n: (len(n.free_slots) - count, n.name))
    return Placement(best.name, tuple(sorted(best.free_slots)[:count]))


def headroom(nodes: Iterable[NodeView], gpu_type: str, count: int) -> int:
    """How many more replicas of ``count`` slots of ``gpu_type`` fit in the free slots now.

    A replica takes its slots on one node, so each node contributes its free slots divided by
    ``count``, rounded down; placing them one by one with ``place`` reaches the same number.
    """
    return sum(len(n.free_slots) // count for n in nodes if n.gpu_type == gpu_type)


@dataclass
class FleetIndex:
    """Explicit placement state: free slots per node, bucketed by pool and free count.

    ``take`` and ``give_back`` keep the buckets current, so a caller placing
    many replicas in a row never rescans the fleet. Within a bucket, nodes
    keep their insertion order, which makes every decision deterministic.
    """

    free: dict[str, list[int]] = field(default_factory=dict)
    pool: dict[str, str] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, dict[int, dict[str, None]]] = field(default_factory=dict)
    largest: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, nodes: Iterable[NodeView]) -> FleetIndex:
        idx = cls()
        for n in sorted(nodes, key=lambda n: n.name):
            idx.free[n.name] = sorted(n.free_slots)
            idx.pool[n.name] = n.gpu_type
            idx.total[n.name] = n.total
            idx.largest[n.gpu_type] = max(idx.largest.get(n.gpu_type, 0), n.total)
            idx._bucket(n.name)[n.name] = None
        return idx

    def copy(self) -> FleetIndex:
        # ``take`` and ``give_back`` replace a node's free list rather than change it, so the
        # copy may share the lists themselves.
        return FleetIndex(
            free=dict(self.free), pool=self.pool, total=self.total,
            buckets={p: {c: dict(ns) for c, ns in b.items()} for p, b in self.buckets.items()},
            largest=dict(self.largest),
        )

    def _bucket(self, node: str) -> dict[str, None]:
        return self.buckets.setdefault(self.pool[node], {}).setdefault(len(self.free[node]), {})

    def find(self, gpu_type: str, count: int) -> Placement | NoPlacement:
        """Best fit without taking anything."""
        if self.largest.get(gpu_type, 0) < count:
            return _no_node(gpu_type, count)
        buckets = self.buckets.get(gpu_type, {})
        for free in range(count, self.largest[gpu_type] + 1):
            nodes = buckets.get(free)
            if nodes:
                node = next(iter(nodes))
                return Placement(node, tuple(self.free[node][:count]))
        return _busy(gpu_type)

    def take(self, p: Placement) -> None:
        del self._bucket(p.node)[p.node]
        taken = set(p.slots)
        self.free[p.node] = [s for s in self.free[p.node] if s not in taken]
        self._bucket(p.node)[p.node] = None

    def give_back(self, node: str, slots: Iterable[int]) -> None:
        if node not in self.free:
            return
        del self._bucket(node)[node]
        self.free[node] = sorted(set(self.free[node]) | set(slots))
        self._bucket(node)[node] = None

    def place(self, gpu_type: str, count: int) -> Placement | NoPlacement:
        decision = self.find(gpu_type, count)
        if isinstance(decision, Placement):
            self.take(decision)
        return decision

    def capacity(self, gpu_type: str, count: int) -> int:
        """Replicas of ``count`` slots the pool could hold if it were empty."""
        return sum(self.total[n] // count for n, p in self.pool.items() if p == gpu_type)
