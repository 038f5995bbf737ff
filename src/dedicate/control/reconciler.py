"""The replica reconciler: one level-triggered loop over the endpoints that are not stopped.

Each pass holds the lease (``lease.py``), re-reads the active endpoints and the
live replicas from the store and the processes from the runtime, then:
upkeep (``upkeep.py``: adopt, launch, poll, probe, record exits, stop),
scale down and place by the capacity plan (``converge.py``, ``launching.py``),
and settle each endpoint's counts, state and message (``domain/status.py``)
with guarded writes. Network calls and process operations never run inside a
transaction; an API call may only wake the loop early; a pass never dies on
one bad item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime

import httpx

from dedicate.clock import Clock
from dedicate.control.billing import Billing
from dedicate.control.converge import Converger, PlanResult, by_endpoint
from dedicate.control.failures import Failures
from dedicate.control.launching import Launcher
from dedicate.control.lease import LeaseKeeper, lease_ttl_s
from dedicate.control.upkeep import Probe, ReplicaUpkeep
from dedicate.control.weights import WeightsPreparer
from dedicate.domain.endpoints import check_transition
from dedicate.domain.errors import Conflict
from dedicate.domain.records import Address, Endpoint, Replica
from dedicate.domain.status import Waiting, endpoint_status
from dedicate.runtimes.base import Demand, Handle, Runtime
from dedicate.settings import Settings
from dedicate.store.base import StaleLease
from dedicate.store.repos import EndpointWrite, Store

log = logging.getLogger("dedicate.reconciler")

BUDGET_CHECK_S = 10.0


class Reconciler:
    def __init__(self, store: Store, runtime: Runtime, settings: Settings, clock: Clock,
                 probe: Probe | None = None, weights: WeightsPreparer | None = None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.clock = clock
        self.wake = asyncio.Event()
        self.billing = Billing(store, clock)
        self.lease = LeaseKeeper(store, clock, runtime.instance, lease_ttl_s(settings.reconcile_interval_s),
                                 on_acquired=self._took_over)
        self.failures = Failures()
        self.weights = weights or WeightsPreparer(settings.models_dir, clock)
        self.launcher = Launcher(runtime, settings, clock, self.failures, self.weights)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(2.0))
        self.upkeep = ReplicaUpkeep(runtime, settings, clock, self.failures, self.launcher,
                                    probe or self._http_probe, self.wake.set)
        self.converger = Converger(runtime, settings, clock, self.failures, self.launcher, self.wake.set)
        self._budgets_checked_at: datetime | None = None
        self._demand: tuple[Demand, ...] = ()  # what waits for hardware, as the runtime was last told
        self._asked = False  # whether the runtime's cluster was asked for it
        self._waiting_for_nodes: set[str] = set()  # endpoints whose queued replicas wait for new nodes

    @property
    def store(self) -> Store:
        """The fenced store while this process holds the lease, else the plain one."""
        return self.lease.store

    @property
    def is_leader(self) -> bool:
        return self.lease.is_leader

    @property
    def holder(self) -> str:
        return self.lease.holder

    @holder.setter
    def holder(self, value: str) -> None:
        self.lease.holder = value

    async def _http_probe(self, address: Address) -> bool:
        try:
            resp = await self._http.get(f"{address.url}/health")
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def _took_over(self, store: Store) -> None:
        # Nobody watched the replicas between the last holder's probes and ours: whatever was
        # open is closed at its last good probe, and billing resumes at our first good probe.
        closed = await asyncio.to_thread(store.close_intervals, None, "control plane outage")
        if closed:
            log.info("closed %d billing interval(s) left open by the previous holder", closed)

    # the loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        heartbeat = asyncio.create_task(self.lease.heartbeat(stop))
        try:
            while not stop.is_set():
                try:
                    await self.pass_once()
                except StaleLease:
                    log.warning("lost the reconciler lease mid-pass; standing by")
                    self.lease.lost()
                except Exception:  # a pass must never kill the loop
                    log.exception("reconcile pass failed")
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.reconcile_interval_s)
        finally:
            await heartbeat

    async def pass_once(self) -> None:
        if not await self.lease.hold():
            return
        store = self.store
        endpoints, live = await self._read(store)
        processes = await asyncio.to_thread(self.runtime.running)
        self.upkeep.stop_orphans(processes, {r.id for r in live})
        seen = await self.upkeep.observe(store, live, processes, {e.id: e for e in endpoints})
        if seen is None:  # more than steady probes was written: read again
            endpoints, live = await self._read(store)
        else:
            live = seen
        if await self.converger.scale_down(store, endpoints, live):
            live = await asyncio.to_thread(store.live_replicas)
        planned = await self.converger.place(store, endpoints, live)
        if planned.plan.placements or planned.plan.drains:
            endpoints, live = await self._read(store)
        await self._ask_for_nodes(endpoints, planned)
        await self._settle(store, endpoints, live, planned)
        await self._check_budgets(store)

    async def _read(self, store: Store) -> tuple[list[Endpoint], list[Replica]]:
        """The endpoints a pass looks at (not stopped, or holding a live replica) and the live replicas."""
        endpoints = await asyncio.to_thread(store.active_endpoints)
        live = await asyncio.to_thread(store.live_replicas)
        missing = {r.endpoint_id for r in live} - {e.id for e in endpoints}
        if missing:  # a stopped endpoint with a replica still alive: it must be looked after too
            endpoints = sorted([*endpoints, *await asyncio.to_thread(store.endpoints_by_id, missing)],
                               key=lambda e: (e.created_at, e.id))
        return endpoints, live

    async def _ask_for_nodes(self, endpoints: Sequence[Endpoint], planned: PlanResult) -> None:
        """Tell the runtime what waits for hardware, so a cluster with an autoscaler adds nodes."""
        wanted: dict[tuple[str, int], int] = {}
        waiting: set[str] = set()
        for ep in endpoints:
            queued = planned.plan.queued.get(ep.id, 0)
            hw = self.settings.catalog.hardware.get(ep.hardware)
            if queued and hw is not None and not hw.is_cpu:
                wanted[hw.gpu_type, hw.gpu_count] = wanted.get((hw.gpu_type, hw.gpu_count), 0) + queued
                waiting.add(ep.id)
        demand = tuple(Demand(t, n, k) for (t, n), k in sorted(wanted.items()))
        if demand != self._demand:
            self._asked = await asyncio.to_thread(self.runtime.ask_for, demand)
            self._demand = demand
        self._waiting_for_nodes = waiting if self._asked else set()

    async def _check_budgets(self, store: Store) -> None:
        now = self.clock.now()
        if self._budgets_checked_at is not None and \
                (now - self._budgets_checked_at).total_seconds() < BUDGET_CHECK_S:
            return
        self._budgets_checked_at = now
        if await asyncio.to_thread(self.billing.check_budgets, store):
            self.wake.set()

    # settling -----------------------------------------------------------------------------------

    async def _settle(self, store: Store, endpoints: Sequence[Endpoint], live: Sequence[Replica],
                      planned: PlanResult) -> None:
        """Record each endpoint's state, counts, queue position and message where they changed (one write)."""
        now = self.clock.now()
        mine = by_endpoint(live)
        writes: list[EndpointWrite] = []
        for ep in endpoints:
            try:
                w = self._settled(ep, mine.get(ep.id, []), planned, now)
            except Exception:
                log.exception("settling endpoint %s failed", ep.id)
                continue
            if w is not None:
                writes.append(w)
        if writes:
            await asyncio.to_thread(store.settle_endpoints, writes, now)

    def _settled(self, ep: Endpoint, replicas: list[Replica], planned: PlanResult, now: datetime
                 ) -> EndpointWrite | None:
        """What settling ``ep`` writes, if anything."""
        hw = self.settings.catalog.hardware.get(ep.hardware)
        model = self.settings.catalog.models.get(ep.model)
        preparing = self.weights.preparing(model) if model is not None else None
        why = planned.unplaceable.get(ep.id, "waiting for capacity")
        if ep.id in self._waiting_for_nodes:
            why += "; asked the cluster's autoscaler for nodes, waiting for new nodes"
        waiting = Waiting(
            queued=planned.plan.queued.get(ep.id, 0), position=planned.plan.positions.get(ep.id),
            why=why, backoff_until=self.failures.until(ep.id),
            preparing=preparing.describe(ep.model, now) if preparing is not None else None,
            held=self.failures.why(ep.id))
        status = endpoint_status(ep, replicas, waiting, max_failures=self.settings.max_failures_before_ready,
                                 shape=f"{hw.gpu_count}x {hw.gpu_type}" if hw else ep.hardware, now=now)
        changes: dict[str, object] = {}
        if status.message != ep.status_message:
            changes["status_message"] = status.message
        if status.counts.queued != ep.queued_replicas:
            changes["queued_replicas"] = status.counts.queued
        if waiting.position != ep.queue_position:
            changes["queue_position"] = waiting.position
        if ep.min_queued_at is not None and status.counts.ready + status.counts.starting >= ep.min_replicas:
            changes["min_queued_at"] = None  # its minimum is placed: it left the queue
        if status.state != ep.state:
            try:
                check_transition(ep.state, status.state)
            except Conflict:
                log.warning("endpoint %s: refusing %s → %s", ep.id, ep.state, status.state)
                return None
            return EndpointWrite(ep, status.state, ("state", f"{ep.state} → {status.state}: {status.message}"),
                                 changes)
        if not changes:
            return None
        event = ("queued", status.message) if waiting.position is not None and \
            waiting.position != ep.queue_position else None
        return EndpointWrite(ep, None, event, changes)

    # shutdown ---------------------------------------------------------------------------------

    async def settle(self) -> None:
        """Wait for the stops this loop started in the background (tests, shutdown)."""
        await self.upkeep.settle()

    async def shutdown(self) -> None:
        """Stop every live replica in the database, closing its billing facts; intents stay.

        Only the lease holder does this: a standby server that shuts down leaves the
        replicas to the holder.
        """
        await self.weights.aclose()
        if not self.is_leader:
            await self._http.aclose()
            return
        try:
            await self._stop_all()
        except StaleLease:  # the lease moved on mid-shutdown: the new holder looks after the replicas
            log.warning("lost the reconciler lease while shutting down; leaving the replicas to the new holder")
        await self.lease.release()
        await self._http.aclose()

    async def _stop_all(self) -> None:
        store = self.store
        now = self.clock.now()
        stops = []
        for r in await asyncio.to_thread(store.live_replicas):
            if r.facts.stop_requested_at is None:
                await asyncio.to_thread(store.update_replica, r, now, None,
                                        stop_requested_at=now, stop_reason="server shutdown")
            fresh = await asyncio.to_thread(store.get_replica, r.id)
            if fresh is None:
                continue
            if fresh.pid is None:
                await asyncio.to_thread(store.update_replica, fresh, now, None, stopped_at=now)
                continue
            stops.append(self.upkeep.stop(store, fresh, Handle(fresh.pid, fresh.process_started or "")))
        await asyncio.gather(*stops, return_exceptions=True)
        await self.upkeep.settle()

