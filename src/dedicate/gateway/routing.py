"""The routing table: endpoint name → its ready replicas, and the choice among them.

A name is a deployment's own (what v1 lists) or a route's (v2's endpoint): a route's request goes
to one deployment of its traffic split, chosen with probability weight × ready replicas; when
none is ready, by weight alone, and the request waits there for a replica. Deployments told to
stop are chosen only if every weighted one is. A route whose split gives no deployment a
weight above 0 is ``Unrouted``.

The table is a snapshot of the store. A request that finds it older than
``ttl_s`` starts a refresh in the background and goes on with the snapshot it
has (the store is never read on the request's path); a request for a name
the snapshot lacks, or one being held for a replica, waits for a fresh read.
Several gateway processes each read the same truth.

A request waiting for a replica's first byte asks the table, every second, whether that replica
is still answering (``answering``): a replica gone from the live ones, or failing its health
probes, will not answer, and the request is tried elsewhere rather than waiting out its per-try
timeout. A replica draining for a stop still answers what it took, so it is waited for.

Per replica the table keeps a ``ReplicaState`` (in-flight count, counters,
health) that outlives snapshots: a replica that leaves the table keeps its
state until its last request is done.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from dedicate.domain import routes as named
from dedicate.domain.records import Endpoint, Replica
from dedicate.domain.replicas import ReplicaStatus
from dedicate.gateway.health import HealthPolicy
from dedicate.gateway.signals import Counters

Loader = Callable[[], tuple[list[Endpoint], list[Replica]]]
RouteLoader = Callable[[], list[named.Route]]


class ReplicaState(Counters):
    """One replica as this gateway saw it: load, counters and health."""

    __slots__ = ("consecutive_failures", "ejected_until", "ejections", "endpoint_id", "replica_id")

    def __init__(self, replica_id: str, endpoint_id: str) -> None:
        super().__init__()
        self.replica_id = replica_id
        self.endpoint_id = endpoint_id
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = 0.0


class Target:
    """A ready replica to send to, with its request head prepared once per path."""

    __slots__ = ("_heads", "address", "replica_id", "state", "token", "url")

    def __init__(self, replica_id: str, url: str, token: str, state: ReplicaState) -> None:
        self.replica_id = replica_id
        self.url = url
        self.token = token
        self.state = state
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._heads: dict[str, bytes] = {}

    def head(self, path: str) -> bytes:
        """The request line and headers up to ``content-length: `` (the caller appends the length)."""
        head = self._heads.get(path)
        if head is None:
            host, port = self.address
            head = (f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\nauthorization: Bearer {self.token}\r\n"
                    "content-type: application/json\r\naccept-encoding: identity\r\ncontent-length: ").encode()
            self._heads[path] = head
        return head


@dataclass(frozen=True)
class Route:
    endpoint: Endpoint
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Unrouted:
    """A route whose split sends nothing anywhere."""

    name: str
    owner: str
    id: str


@dataclass(frozen=True)
class Split:
    route: named.Route
    members: tuple[tuple[str, float], ...]  # (deployment name, weight > 0), in split order


class Snapshot:
    __slots__ = ("live", "routes", "splits", "suspect", "taken_at")

    def __init__(self, routes: dict[str, Route] | None = None, taken_at: float = float("-inf"),
                 splits: dict[str, Split] | None = None, live: frozenset[str] = frozenset(),
                 suspect: frozenset[str] = frozenset()) -> None:
        self.routes = routes or {}
        self.splits = splits or {}
        self.taken_at = taken_at
        self.live = live  # every replica not stopped, ready or not
        self.suspect = suspect  # live, but failing its probes or being replaced for it


class RoutingTable:
    def __init__(self, load: Loader, ttl_s: float = 0.5, rng: random.Random | None = None,
                 health: HealthPolicy | None = None, monotonic: Callable[[], float] = time.monotonic,
                 load_routes: RouteLoader | None = None) -> None:
        self._load = load
        self._load_routes = load_routes
        self.ttl_s = ttl_s
        self.snapshot = Snapshot()
        self.states: dict[str, ReplicaState] = {}
        self.health = health or HealthPolicy()
        self.monotonic = monotonic  # health's clock (snapshots age in real time)
        self._rng = rng or random.Random()
        self._refreshing: asyncio.Future[Snapshot] | None = None

    # the snapshot ----------------------------------------------------------------

    def _build(self, endpoints: list[Endpoint], replicas: list[Replica], taken_at: float,
               named_routes: list[named.Route] | None = None) -> Snapshot:
        by_ep: dict[str, list[Target]] = {}
        old = {t.replica_id: t for r in self.snapshot.routes.values() for t in r.targets}
        for r in replicas:
            if r.status is not ReplicaStatus.READY or r.url is None:
                continue
            prev = old.get(r.id)
            if prev is not None and prev.url == r.url and prev.token == r.token:
                target = prev
            else:
                state = self.states.get(r.id)
                if state is None:
                    state = self.states[r.id] = ReplicaState(r.id, r.endpoint_id)
                target = Target(r.id, r.url, r.token, state)
            by_ep.setdefault(r.endpoint_id, []).append(target)
        routes = {e.name: Route(e, tuple(by_ep.get(e.id, ()))) for e in endpoints}
        live = {t.replica_id for ts in by_ep.values() for t in ts}
        for rid in [rid for rid, s in self.states.items() if rid not in live and s.in_flight == 0]:
            del self.states[rid]  # gone, and nothing of ours is still running there
        names = {e.id: e.name for e in endpoints}
        splits = {r.name: Split(r, tuple((names[e.deployment], e.weight) for e in r.split
                                         if e.weight > 0 and e.deployment in names))
                  for r in named_routes or ()}
        suspect = frozenset(r.id for r in replicas if r.facts.probe_failures > 0 or r.stop_reason == "unhealthy")
        return Snapshot(routes, taken_at, splits, frozenset(r.id for r in replicas), suspect)

    async def refresh(self, max_age_s: float = 0.0) -> Snapshot:
        """A snapshot no older than ``max_age_s``; concurrent callers share one read of the store."""
        return await self.read_since(time.monotonic() - max_age_s)

    async def _read(self) -> Snapshot:
        try:
            started = time.monotonic()
            endpoints, replicas, named_routes = await asyncio.to_thread(self._load_all)
            self.snapshot = self._build(endpoints, replicas, started, named_routes)
            return self.snapshot
        finally:
            self._refreshing = None

    def current(self) -> Snapshot:
        """The snapshot as it is; starts a background refresh when it is older than ``ttl_s``."""
        snap = self.snapshot
        if self._refreshing is None and time.monotonic() - snap.taken_at > self.ttl_s:
            self._refreshing = asyncio.ensure_future(self._read())
            self._refreshing.add_done_callback(_consume)
        return snap

    def _load_all(self) -> tuple[list[Endpoint], list[Replica], list[named.Route]]:
        endpoints, replicas = self._load()
        return endpoints, replicas, (self._load_routes() if self._load_routes is not None else [])

    async def route(self, name: str) -> Route | Unrouted | None:
        """The deployment a request for ``name`` goes to (chosen from its route's split), or None."""
        route = self.resolve(self.current(), name)
        if route is None:  # perhaps made since the snapshot was read: ask a read begun after now
            route = self.resolve(await self.read_since(time.monotonic()), name)
        return route

    def resolve(self, snap: Snapshot, name: str) -> Route | Unrouted | None:
        split = snap.splits.get(name)
        if split is None:
            return snap.routes.get(name)
        members = [(r, w, len(r.targets), r.endpoint.should_run)
                   for n, w in split.members if (r := snap.routes.get(n)) is not None]
        weighted = named.choice_weights(members)
        if not weighted:
            return Unrouted(split.route.name, split.route.owner, split.route.id)
        return self._pick(weighted)

    async def shared(self, name: str) -> bool:
        """Whether ``name`` is a route shared with the organization (every key of it may call it), as a
        snapshot no older than ``ttl_s`` says: a permission is never read from an old one."""
        split = (await self.refresh(max_age_s=self.ttl_s)).splits.get(name)
        return split is not None and split.route.visibility is named.Visibility.INTERNAL

    def _pick(self, weighted: list[tuple[Route, float]]) -> Route:
        if len(weighted) == 1:
            return weighted[0][0]
        x = self._rng.random() * sum(w for _, w in weighted)
        for r, w in weighted:
            x -= w
            if x < 0:
                return r
        return weighted[-1][0]

    async def read_since(self, t: float) -> Snapshot:
        """A snapshot whose read began at ``t`` or later: one just created is in it. Callers share reads."""
        while self.snapshot.taken_at < t:
            running = self._refreshing
            if running is None:
                running = self._refreshing = asyncio.ensure_future(self._read())
            await asyncio.shield(running)
        return self.snapshot

    def answering_from_now(self, replica_id: str) -> Callable[[], str | None]:
        """``answering`` for a request sent now, to ask while it waits."""
        since = time.monotonic()  # snapshots age in real time
        return lambda: self.answering(replica_id, since)

    def answering(self, replica_id: str, since: float) -> str | None:
        """Why ``replica_id`` will not answer a request sent at ``since``, as a snapshot read after then
        says, or None while it may (or no such snapshot is here yet: one is asked for)."""
        snap = self.current()
        if snap.taken_at < since:
            return None
        if replica_id not in snap.live:
            return f"replica {replica_id} has stopped"
        if replica_id in snap.suspect:
            return f"replica {replica_id} is failing its health probes"
        return None

    # choosing ------------------------------------------------------------------------

    @staticmethod
    def with_room(route: Route) -> tuple[Target, ...]:
        """The route's replicas that may take one more request under its deployment's per-replica cap."""
        cap = route.endpoint.max_concurrency
        if not cap:
            return route.targets
        return tuple(t for t in route.targets if t.state.in_flight < cap)

    def choose(self, targets: tuple[Target, ...], exclude: set[str] | None = None) -> Target | None:
        """Least outstanding requests between two random choices, among replicas not ejected.

        Ejected replicas are skipped unless every candidate is ejected: then all are
        candidates again, so an endpoint never loses all its replicas to ejection.
        """
        pool: tuple[Target, ...] | list[Target] = targets
        if exclude:
            pool = [t for t in targets if t.replica_id not in exclude]
        n = len(pool)
        if n == 0:
            return None
        now = self.monotonic()
        healthy = [t for t in pool if t.state.ejected_until <= now]
        if healthy and len(healthy) < n:
            pool, n = healthy, len(healthy)
        if n == 1:
            return pool[0]
        rand = self._rng.randrange
        i = rand(n)
        j = rand(n - 1)
        if j >= i:
            j += 1
        a, b = pool[i], pool[j]
        return a if a.state.in_flight <= b.state.in_flight else b

    # health ------------------------------------------------------------------------------

    def record_success(self, target: Target) -> None:
        self.health.on_success(target.state, self.monotonic())

    def record_failure(self, target: Target, route: Route) -> bool:
        """Count a failure; True if the replica is now ejected (never the endpoint's last healthy one)."""
        now = self.monotonic()
        others_healthy = any(t.state.ejected_until <= now for t in route.targets if t is not target)
        return self.health.on_failure(target.state, now, may_eject=others_healthy)


def _consume(fut: asyncio.Future[Snapshot]) -> None:
    """A background refresh that failed is retried by the next request; the error is not lost silently."""
    if not fut.cancelled() and fut.exception() is not None:
        logging.getLogger("dedicate.gateway").warning("routing table refresh failed: %s", fut.exception())
