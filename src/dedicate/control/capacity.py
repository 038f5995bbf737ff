"""Capacity as the control plane sees it: nodes, what holds them, and which engine runs where."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from dedicate.domain.catalog import Catalog
from dedicate.domain.hardware import Hardware
from dedicate.domain.models import ModelSpec
from dedicate.domain.records import Replica
from dedicate.runtimes.base import Node
from dedicate.scheduler.placement import NodeView


def used_slots(replicas: Iterable[Replica]) -> dict[str, set[int]]:
    used: dict[str, set[int]] = {}
    for r in replicas:
        if r.node is not None and r.slots:
            used.setdefault(r.node, set()).update(r.slots)
    return used


def node_views(nodes: Sequence[Node], live: Iterable[Replica]) -> list[NodeView]:
    """Every node with its free slots; a replica holds its slots until it has stopped."""
    used = used_slots(live)
    return [NodeView(n.name, n.gpu_type, n.slots,
                     tuple(s for s in range(n.slots) if s not in used[n.name]) if n.name in used
                     else tuple(range(n.slots)))
            for n in nodes]


def engine_for(catalog: Catalog, model: ModelSpec, hw: Hardware, nodes: Sequence[Node]) -> str | None:
    """The engine replicas of ``model`` on ``hw`` run here, or None if none can.

    A node may name its own engine (a declared node running the synthetic or
    CPU engine while accounted as GPUs); otherwise the hardware shape's engine
    is used. Nodes of one GPU type are expected to agree.
    """
    overrides = node_engines(nodes).get(hw.gpu_type, ())
    for engine in overrides:
        if engine in model.engines and engine in catalog.engines:
            return engine
    return None if overrides else catalog.engine_for(model, hw)


_last: tuple[Sequence[Node], Mapping[str, tuple[str, ...]]] | None = None


def node_engines(nodes: Sequence[Node]) -> Mapping[str, tuple[str, ...]]:
    """Per GPU type, the engines that nodes name for themselves, sorted.

    Kept for the last large tuple asked about: the runtimes hand out the same tuple while their
    nodes stay as they are, so a GET of an endpoint does not walk 1,000 nodes to find its engine.
    """
    global _last
    last = _last
    if last is not None and last[0] is nodes:
        return last[1]
    found: dict[str, set[str]] = {}
    for n in nodes:
        if n.engine:
            found.setdefault(n.gpu_type, set()).add(n.engine)
    engines = {gpu: tuple(sorted(names)) for gpu, names in found.items()}
    if isinstance(nodes, tuple) and len(nodes) > 16:
        _last = (nodes, engines)
    return engines
