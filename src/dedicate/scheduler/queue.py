"""The hardware queue: who gets capacity next, and who yields it.

Pure: the fleet index and every endpoint's demand in, a plan out. The rules,
per pool (one GPU type):

1. A lost replica within an endpoint's minimum is replaced first: it
   outranks the queue (the endpoint had its minimum; it keeps it).
2. Missing minimums are served strictly first come, first served, by the
   time they joined the queue (an endpoint entering PENDING, or the extra
   replicas of a raised ``min_replicas``, which join at the back). An
   endpoint's missing minimum is placed all at once or not at all; while the
   head waits, nobody behind it is placed, even where they would fit.
3. If the head does not fit, replicas above other endpoints' minimums
   (surplus) are drained when that lets the head fit: surplus yields to
   minimums. The head is placed once their slots are free. Slots of
   replicas already stopping count as free for this: the head waits for
   them rather than draining more surplus.
4. Surplus (replicas between the minimum and the desired count) is placed
   only while no minimum waits in the pool, as far as capacity and the
   owner's GPU quota allow; what does not fit stays queued.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dedicate.scheduler.placement import FleetIndex, NoPlacement, Placement


@dataclass(frozen=True)
class SurplusReplica:
    replica_id: str
    node: str
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Demand:
    endpoint_id: str
    owner: str
    pool: str
    gpus: int  # slots per replica
    min_replicas: int
    desired: int
    active: int  # replicas holding a place and not asked to stop
    min_queued_at: datetime | None
    created_at: datetime
    surplus: tuple[SurplusReplica, ...] = ()  # its replicas above its minimum, least valuable first
    quota_applies: bool = True  # GPU quotas do not cap CPU slots

    @property
    def missing_min(self) -> int:
        return max(0, self.min_replicas - self.active)

    @property
    def missing_surplus(self) -> int:
        return max(0, self.desired - max(self.active, self.min_replicas))


@dataclass
class Plan:
    placements: dict[str, list[Placement]] = field(default_factory=dict)
    drains: list[tuple[str, str]] = field(default_factory=list)  # (replica id, endpoint it yields to)
    queued: dict[str, int] = field(default_factory=dict)  # endpoint -> replicas waiting
    positions: dict[str, int] = field(default_factory=dict)  # endpoint -> place in its pool's queue
    reasons: dict[str, str] = field(default_factory=dict)


def _place_all(index: FleetIndex, pool: str, gpus: int, n: int) -> list[Placement] | NoPlacement:
    """Place ``n`` replicas at once, or none (the index is untouched on failure)."""
    trial = index.copy() if n > 1 else index
    out: list[Placement] = []
    for _ in range(n):
        d = trial.place(pool, gpus)
        if isinstance(d, NoPlacement):
            return d
        out.append(d)
    if trial is not index:
        for p in out:
            index.take(p)
    return out


def _yield_for(index: FleetIndex, head: Demand, others: Sequence[Demand], draining: set[str],
               releasing: Sequence[SurplusReplica] = ()) -> list[SurplusReplica] | None:
    """The fewest surplus replicas of other endpoints whose slots let ``head``'s minimum fit.

    ``releasing`` are replicas already asked to stop that still hold their slots: they free
    them soon, so they count as free here (an empty list: the head just waits for them).
    """
    base = index.copy()
    for r in releasing:
        if index.pool.get(r.node) == head.pool:
            base.give_back(r.node, r.slots)

    def fits_without(drained: Sequence[SurplusReplica]) -> bool:
        trial = base.copy()
        for s in drained:
            trial.give_back(s.node, s.slots)
        return not isinstance(_place_all(trial, head.pool, head.gpus, head.missing_min), NoPlacement)

    candidates = [s for d in others if d.endpoint_id != head.endpoint_id for s in d.surplus
                  if s.replica_id not in draining]
    chosen: list[SurplusReplica] = []
    for s in candidates:
        if fits_without(chosen):
            break
        chosen.append(s)
    if not chosen or not fits_without(chosen):
        return None
    # Keep only what is needed: try sparing each chosen replica, the most valuable first.
    for s in reversed(list(chosen)):
        rest = [c for c in chosen if c is not s]
        if rest and fits_without(rest):
            chosen = rest
    return chosen


def plan(index: FleetIndex, demands: Sequence[Demand], quotas: Mapping[str, int] | None = None,
         usage: Mapping[str, int] | None = None, releasing: Sequence[SurplusReplica] = ()) -> Plan:
    """Decide placements and drains for one pass. ``index`` is consumed (placements are taken).

    ``releasing``: replicas asked to stop (of any endpoint) whose slots are not free yet.
    """
    quotas = quotas or {}
    used = dict(usage or {})
    result = Plan()
    draining: set[str] = set()
    pools = sorted({d.pool for d in demands})
    for pool in pools:
        mine = [d for d in demands if d.pool == pool]
        replacing = sorted((d for d in mine if d.missing_min and d.min_queued_at is None),
                           key=lambda d: (d.created_at, d.endpoint_id))
        queue = sorted((d for d in mine if d.missing_min and d.min_queued_at is not None),
                       key=lambda d: (d.min_queued_at, d.created_at, d.endpoint_id))
        blocked = False
        for position, d in enumerate([*replacing, *queue]):
            in_queue = d.min_queued_at is not None
            if blocked:
                result.queued[d.endpoint_id] = d.missing_min
                if in_queue:  # replacements are not in the queue: they come before it
                    result.positions[d.endpoint_id] = position - len(replacing) + 1
                continue
            placed = _place_all(index, pool, d.gpus, d.missing_min)
            if not isinstance(placed, NoPlacement):
                result.placements[d.endpoint_id] = placed
                if d.quota_applies:
                    used[d.owner] = used.get(d.owner, 0) + d.gpus * len(placed)
                continue
            # A minimum that no node could ever hold (a node shrank since) must not block the pool.
            blocked = placed.exists
            result.queued[d.endpoint_id] = d.missing_min
            if in_queue:
                result.positions[d.endpoint_id] = position - len(replacing) + 1
            reason = placed.reason
            if placed.exists:
                victims = _yield_for(index, d, mine, draining, releasing)
                if victims:
                    result.drains.extend((v.replica_id, d.endpoint_id) for v in victims)
                    draining.update(v.replica_id for v in victims)
                    reason = f"{reason}; {len(victims)} surplus replica(s) of other endpoints yield to it"
            result.reasons[d.endpoint_id] = reason
        for d in sorted((d for d in mine if d.missing_surplus), key=lambda d: (d.created_at, d.endpoint_id)):
            want = d.missing_surplus
            if blocked:
                result.queued[d.endpoint_id] = result.queued.get(d.endpoint_id, 0) + want
                result.reasons.setdefault(d.endpoint_id, f"{pool} capacity is held for queued minimums")
                continue
            got: list[Placement] = []
            for _ in range(want):
                cap = quotas.get(d.owner) if d.quota_applies else None
                if cap is not None and used.get(d.owner, 0) + d.gpus > cap:
                    result.reasons[d.endpoint_id] = f"owner {d.owner}'s GPU quota of {cap} is reached"
                    break
                p = index.place(pool, d.gpus)
                if isinstance(p, NoPlacement):
                    result.reasons[d.endpoint_id] = p.reason
                    break
                got.append(p)
                if d.quota_applies:
                    used[d.owner] = used.get(d.owner, 0) + d.gpus
            if got:
                result.placements.setdefault(d.endpoint_id, []).extend(got)
            if len(got) < want:
                result.queued[d.endpoint_id] = result.queued.get(d.endpoint_id, 0) + want - len(got)
    return result
