"""The routing table: endpoint name → its ready replicas, and the choice among them.

The table is a snapshot of the store, refreshed at most every ``ttl_s``
(level-triggered: several gateway processes each read the same truth).
In-flight counts live here, per replica, and can never go negative: a slot is
taken by ``acquire`` and given back by the returned lease, exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dedicate.domain.records import Endpoint, Replica
from dedicate.domain.replicas import ReplicaStatus


@dataclass(frozen=True)
class Target:
    replica_id: str
    url: str
    token: str


@dataclass(frozen=True)
class Route:
    endpoint: Endpoint
    targets: tuple[Target, ...]


@dataclass
class ReplicaStats:
    in_flight: int = 0
    requests: int = 0
    errors: int = 0


@dataclass
class Snapshot:
    routes: dict[str, Route] = field(default_factory=dict)
    taken_at: float = 0.0


class RoutingTable:
    def __init__(self, load: Callable[[], tuple[list[Endpoint], list[Replica]]], ttl_s: float = 0.5,
                 rng: random.Random | None = None) -> None:
        self._load = load
        self._ttl = ttl_s
        self._snap = Snapshot()
        self._lock = asyncio.Lock()
        self.stats: dict[str, ReplicaStats] = {}
        self._rng = rng or random.Random()

    async def refresh(self, force: bool = False) -> Snapshot:
        if not force and time.monotonic() - self._snap.taken_at < self._ttl:
            return self._snap
        async with self._lock:
            if not force and time.monotonic() - self._snap.taken_at < self._ttl:
                return self._snap
            endpoints, replicas = await asyncio.to_thread(self._load)
            by_ep: dict[str, list[Target]] = {}
            for r in replicas:
                if r.status is ReplicaStatus.READY and r.url is not None:
                    by_ep.setdefault(r.endpoint_id, []).append(Target(r.id, r.url, r.token))
            self._snap = Snapshot(
                {e.name: Route(e, tuple(by_ep.get(e.id, ()))) for e in endpoints},
                time.monotonic(),
            )
            return self._snap

    async def route(self, name: str) -> Route | None:
        return (await self.refresh()).routes.get(name)

    def choose(self, targets: tuple[Target, ...], exclude: set[str]) -> Target | None:
        """Least outstanding requests between two random choices."""
        pool = [t for t in targets if t.replica_id not in exclude]
        if not pool:
            return None
        if len(pool) == 1:
            return pool[0]
        a, b = self._rng.sample(pool, 2)
        return a if self._in_flight(a) <= self._in_flight(b) else b

    def _in_flight(self, t: Target) -> int:
        s = self.stats.get(t.replica_id)
        return 0 if s is None else s.in_flight

    def acquire(self, t: Target) -> Callable[[bool], None]:
        s = self.stats.setdefault(t.replica_id, ReplicaStats())
        s.in_flight += 1
        s.requests += 1
        done = False

        def release(failed: bool) -> None:
            nonlocal done
            if done:
                return
            done = True
            s.in_flight -= 1
            if failed:
                s.errors += 1

        return release
