"""Applying the capacity plan: stop what runs beyond its target, then place what is missing.

Per endpoint the target is its desired count (within bounds) while it should
run, else 0. Replicas beyond it are asked to stop, least useful first (not
ready before ready, newest before oldest). Then every endpoint that should run
and is not backing off becomes a ``Demand``; the pure ``scheduler.queue.plan``
decides what is placed where, what yields to a queued minimum, and who waits
at which position; this module carries that out.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dedicate.clock import Clock
from dedicate.control import failpoints
from dedicate.control.capacity import engine_for, node_views
from dedicate.control.failures import Failures
from dedicate.control.launching import Launcher
from dedicate.domain.endpoints import Intent
from dedicate.domain.hardware import Hardware
from dedicate.domain.records import Endpoint, Replica
from dedicate.domain.replicas import ReplicaStatus
from dedicate.runtimes.base import Runtime
from dedicate.scheduler.placement import FleetIndex
from dedicate.scheduler.queue import Demand, Plan, SurplusReplica, plan
from dedicate.settings import Settings
from dedicate.store.repos import ReplicaWrite, Store


def least_useful_first(replicas: Sequence[Replica]) -> list[Replica]:
    """Not ready before ready, newest before oldest: the order replicas are given up in."""
    return sorted(replicas, key=lambda r: (r.status is ReplicaStatus.READY, -r.created_at.timestamp()))


def by_endpoint(replicas: Sequence[Replica], *, active_only: bool = False) -> dict[str, list[Replica]]:
    out: dict[str, list[Replica]] = defaultdict(list)
    for r in replicas:
        if not active_only or r.facts.stop_requested_at is None:
            out[r.endpoint_id].append(r)
    return out


@dataclass
class PlanResult:
    """What this pass's plan said: queue counts and positions, and why each endpoint waits."""

    plan: Plan = field(default_factory=Plan)
    unplaceable: dict[str, str] = field(default_factory=dict)


class Converger:
    def __init__(self, runtime: Runtime, settings: Settings, clock: Clock, failures: Failures,
                 launcher: Launcher, wake: Callable[[], None]) -> None:
        self.runtime = runtime
        self.settings = settings
        self.clock = clock
        self.failures = failures
        self.launcher = launcher
        self.wake = wake

    async def scale_down(self, store: Store, endpoints: Sequence[Endpoint], live: Sequence[Replica]) -> bool:
        """Ask the replicas beyond each endpoint's target to stop; whether any was asked."""
        now = self.clock.now()
        active = by_endpoint(live, active_only=True)
        writes: list[ReplicaWrite] = []
        for ep in endpoints:
            mine = active.get(ep.id, [])
            desired = ep.within_bounds(ep.desired_replicas) if ep.should_run else 0
            if len(mine) <= desired:
                continue
            reason = "endpoint stopped" if ep.intent is Intent.STOP or ep.deleted_at else "scaled down"
            writes.extend(ReplicaWrite(r, ("stopping", f"replica {r.id} stopping: {reason}"),
                                       {"stop_requested_at": now, "stop_reason": reason})
                          for r in least_useful_first(mine)[: len(mine) - desired])
        if not writes:
            return False
        await asyncio.to_thread(store.update_replicas, writes, now)
        failpoints.hit("after_stop_request")
        self.wake()
        return True

    async def place(self, store: Store, endpoints: Sequence[Endpoint], live: Sequence[Replica]) -> PlanResult:
        """Plan with the free slots of every node, and carry the plan out."""
        now = self.clock.now()
        nodes = self.runtime.nodes()
        catalog = self.settings.catalog
        active = by_endpoint(live, active_only=True)
        demands: list[Demand] = []
        usage: dict[str, int] = {}
        result = PlanResult()
        runs_here: dict[tuple[str, str], bool] = {}  # (model, hardware) → an engine here runs it; once a pass
        candidates: list[tuple[Endpoint, Hardware, list[Replica]]] = []
        wanting = False
        for ep in endpoints:
            hw = catalog.hardware.get(ep.hardware)
            mine = active.get(ep.id, [])
            if hw is not None and not hw.is_cpu:  # quotas cap GPUs, not CPU slots
                usage[ep.owner] = usage.get(ep.owner, 0) + hw.gpu_count * len(mine)
            if not ep.should_run:
                self.failures.clear(ep.id)  # stopped or in ERROR: a start begins afresh, at once
                continue
            if self.failures.backing_off(ep.id, now):
                continue
            model = catalog.models.get(ep.model)
            if hw is not None and model is not None and (model.name, hw.id) not in runs_here:
                runs_here[model.name, hw.id] = engine_for(catalog, model, hw, nodes) is not None
            if hw is None or model is None or not runs_here[model.name, hw.id]:
                result.unplaceable[ep.id] = f"no engine here can run {ep.model} on {ep.hardware}"
                continue
            candidates.append((ep, hw, mine))
            wanting = wanting or len(mine) < ep.within_bounds(ep.desired_replicas)
        if not wanting:  # every endpoint that runs has its replicas: the common pass plans nothing
            return result
        for ep, hw, mine in candidates:  # with the surplus each could yield to a queued minimum
            surplus = least_useful_first(mine)[: max(0, len(mine) - ep.min_replicas)]
            demands.append(Demand(
                endpoint_id=ep.id, owner=ep.owner, pool=hw.gpu_type, gpus=hw.gpu_count,
                min_replicas=ep.min_replicas, active=len(mine), desired=ep.within_bounds(ep.desired_replicas),
                min_queued_at=ep.min_queued_at, created_at=ep.created_at, quota_applies=not hw.is_cpu,
                surplus=tuple(SurplusReplica(r.id, r.node or "", r.slots) for r in surplus),
            ))
        index = FleetIndex.build(node_views(nodes, live))
        releasing = [SurplusReplica(r.id, r.node, r.slots)
                     for r in live if r.facts.stop_requested_at is not None and r.node]
        decided = plan(index, demands, await asyncio.to_thread(store.quotas), usage, releasing)
        result.plan = decided

        by_id = {e.id: e for e in endpoints}
        replicas = {r.id: r for r in live}
        for replica_id, for_endpoint in decided.drains:
            r, head = replicas.get(replica_id), by_id.get(for_endpoint)
            if r is None or head is None:
                continue
            reason = f"yielded to the queued minimum of {head.name}"
            await asyncio.to_thread(
                store.update_replica, r, now, ("yielded", f"replica {r.id} drains: {reason}"),
                stop_requested_at=now, stop_reason=reason)
            failpoints.hit("after_stop_request")
        placing = [(by_id[endpoint_id], p) for endpoint_id, placements in decided.placements.items()
                   for p in placements]
        if placing:
            await self.launcher.place(store, placing, nodes, now)
        for endpoint_id in decided.placements:
            result.unplaceable.pop(endpoint_id, None)
        result.unplaceable.update(decided.reasons)
        if decided.drains or decided.placements:
            self.wake()
        return result
