"""The replica reconciler: one level-triggered loop.

Each pass re-reads the endpoints and replicas from the store and the
processes from the runtime, decides, and applies with guarded writes. Network
calls (probes) and process operations never run inside a transaction. An API
call may only wake the loop early; a pass never dies on one bad item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx

from dedicate.clock import Clock
from dedicate.control import failpoints
from dedicate.control.billing import Billing
from dedicate.control.capacity import engine_for, node_views
from dedicate.control.models import ensure_builtin
from dedicate.domain.endpoints import EndpointState, Intent, ReplicaCounts, check_transition, next_state
from dedicate.domain.errors import Conflict
from dedicate.domain.records import Address, Endpoint, Replica
from dedicate.domain.replicas import ReplicaFacts, ReplicaStatus
from dedicate.engines.registry import EngineLaunch, Weights, engine
from dedicate.runtimes.base import Handle, LaunchSpec, Node, Runtime
from dedicate.runtimes.nvml import gpu_env
from dedicate.scheduler.placement import FleetIndex, Placement
from dedicate.scheduler.queue import Demand, Plan, SurplusReplica, plan
from dedicate.settings import Settings
from dedicate.store.repos import StaleLease, Store

log = logging.getLogger("dedicate.reconciler")

STOP_GRACE_S = 10.0
START_TIMEOUT_S = 600.0
LOG_TAIL_LINES = 5
LEASE = "reconciler"


@dataclass
class _Backoff:
    until: datetime


def log_tail(path: str | None, lines: int = LOG_TAIL_LINES) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


Probe = Callable[[Address], Awaitable[bool]]


class Reconciler:
    def __init__(self, store: Store, runtime: Runtime, settings: Settings, clock: Clock,
                 probe: Probe | None = None) -> None:
        self.base_store = store
        self.store = store  # replaced by a fenced view once the lease is held
        # instance:pid:nonce — unique even for two processes with the same pid (containers).
        self.holder = f"{runtime.instance}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._token: int | None = None
        self.is_leader = False
        self._plan = Plan()
        self.billing = Billing(store, clock)
        self._budgets_checked_at: datetime | None = None
        # A longer silence than this between good probes is an outage: it is not billed.
        self.max_gap_s = max(30.0, 10 * settings.reconcile_interval_s)
        self.runtime = runtime
        self.settings = settings
        self.clock = clock
        self.wake = asyncio.Event()
        self._stopping: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backoff: dict[str, _Backoff] = {}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(2.0))
        self._unplaceable: dict[str, str] = {}
        self._probe_port = probe or self._http_probe

    async def _http_probe(self, address: Address) -> bool:
        try:
            resp = await self._http.get(f"{address.url}/health")
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    # the loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.pass_once()
            except StaleLease:
                log.warning("lost the reconciler lease mid-pass; standing by")
                self._token, self.is_leader = None, False
            except Exception:  # a pass must never kill the loop
                log.exception("reconcile pass failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.reconcile_interval_s)

    async def pass_once(self) -> None:
        if not await self._hold_lease():
            return
        endpoints = await asyncio.to_thread(self.store.list_endpoints, include_deleted=True)
        by_id = {e.id: e for e in endpoints}
        live = await asyncio.to_thread(self.store.live_replicas)
        processes = await asyncio.to_thread(self.runtime.running)

        await self._stop_orphans(processes, {r.id for r in live})
        results = await asyncio.gather(*(self._observe(r, processes, by_id.get(r.endpoint_id)) for r in live),
                                       return_exceptions=True)
        for r, res in zip(live, results, strict=True):  # one bad replica never stops the pass
            if isinstance(res, StaleLease):
                raise res
            if isinstance(res, Exception):
                log.error("observing replica %s failed: %r", r.id, res)

        endpoints = await asyncio.to_thread(self.store.list_endpoints, include_deleted=True)
        live_ids = {r.endpoint_id for r in await asyncio.to_thread(self.store.live_replicas)}
        endpoints = [e for e in endpoints if e.deleted_at is None or e.id in live_ids]
        await self._converge(endpoints)
        await self._settle_endpoints(endpoints)
        await self._check_budgets()

    async def _check_budgets(self) -> None:
        now = self.clock.now()
        if self._budgets_checked_at is not None and (now - self._budgets_checked_at).total_seconds() < 10:
            return
        self._budgets_checked_at = now
        if await asyncio.to_thread(self.billing.check_budgets, self.store):
            self.wake.set()

    async def _hold_lease(self) -> bool:
        """Act only while holding the reconciler lease; writes are fenced by its token."""
        now = self.clock.now()
        ttl = max(10.0, 5 * self.settings.reconcile_interval_s)
        current = await asyncio.to_thread(self.base_store.lease, LEASE)
        steal = None
        if current is not None and current[0] != self.holder and self._holder_dead(current[0]):
            steal = current[0]  # our own instance's earlier process, gone: no need to wait it out
        token = await asyncio.to_thread(self.base_store.acquire_lease, LEASE, self.holder, now, ttl, steal)
        if token is None:
            self.is_leader = False
            return False
        if token != self._token:
            self._token = token
            self.store = self.base_store.fenced(LEASE, token)
            log.info("holding the reconciler lease (token %s)", token)
            # Nobody watched the replicas between the last holder's probes and ours: whatever was
            # open is closed at its last good probe, and billing resumes at our first good probe.
            closed = await asyncio.to_thread(self.store.close_intervals, None, "control plane outage")
            if closed:
                log.info("closed %d billing interval(s) left open by the previous holder", closed)
        self.is_leader = True
        return True

    def _holder_dead(self, holder: str) -> bool:
        """Whether the lease holder is an earlier process of this instance on this machine, now gone."""
        parts = holder.split(":")
        if len(parts) != 3:
            return False
        instance, pid, _ = parts
        if instance != self.runtime.instance or not pid.isdigit() or int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    # processes -----------------------------------------------------------------

    async def _stop_orphans(self, processes: dict[str, Handle], live_ids: set[str]) -> None:
        for replica_id, handle in processes.items():
            if replica_id not in live_ids and replica_id not in self._stopping:
                log.warning("stopping orphan replica process %s (pid %s)", replica_id, handle.pid)
                await asyncio.to_thread(self.runtime.stop, handle, STOP_GRACE_S)

    async def _observe(self, r: Replica, processes: dict[str, Handle], ep: Endpoint | None) -> None:
        """Bring one replica's recorded facts up to date with what is running."""
        now = self.clock.now()
        if r.id in self._stopping:
            return
        if r.facts.launched_at is None:
            found = processes.get(r.id)
            if found is not None:  # launched before a crash, never recorded: adopt it
                await asyncio.to_thread(
                    self.store.update_replica, r, now, ("adopted", f"replica {r.id} adopted"),
                    pid=found.pid, process_started=found.started, launched_at=now)
            elif r.facts.stop_requested_at is not None:
                await asyncio.to_thread(self.store.update_replica, r, now, None, stopped_at=now)
            elif ep is not None:
                await self._launch(ep, r)
            return
        handle = Handle(r.pid or -1, r.process_started or "")
        state = await asyncio.to_thread(self.runtime.poll, handle)
        if not state.running:
            await self._record_exit(r, state.exit_code, ep)
            return
        if r.facts.stop_requested_at is not None:
            self._spawn(self._stop(r, handle))
            return
        await self._probe(r, handle, ep)

    async def _record_exit(self, r: Replica, code: int | None, ep: Endpoint | None) -> None:
        now = self.clock.now()
        asked = r.facts.stop_requested_at is not None
        msg = f"replica {r.id} stopped" if asked else \
            f"replica {r.id} exited with code {code}: {log_tail(r.log_path)}"
        ok = await asyncio.to_thread(
            self.store.update_replica, r, now, ("stopped" if asked else "failed", msg),
            stopped_at=now, exit_code=code)
        if ok and not asked and ep is not None:
            await self._count_failure(ep, r, now, msg)

    async def _count_failure(self, ep: Endpoint, r: Replica, now: datetime, msg: str) -> None:
        fresh = await asyncio.to_thread(self.store.get_endpoint, ep.id, include_deleted=True)
        if fresh is None:
            return
        failures = fresh.failures_before_ready + (1 if r.facts.first_ready_at is None else 0)
        delay = min(60.0, 2.0 ** max(failures, 1))
        self._backoff[ep.id] = _Backoff(now + timedelta(seconds=delay))
        await asyncio.to_thread(
            self.store.update_endpoint, fresh, now, None,
            failures_before_ready=failures, status_message=msg[:2000])

    async def _probe(self, r: Replica, handle: Handle, ep: Endpoint | None) -> None:
        now = self.clock.now()
        address = r.address
        if address is None:
            address = await asyncio.to_thread(self.runtime.address_of, r.id)
            if address is None:
                await self._check_start_timeout(r, handle, now)
                return
            ok_address = await asyncio.to_thread(self.store.update_replica, r, now, None, address=address)
            if not ok_address:
                return
            fresh = await asyncio.to_thread(self.store.get_replica, r.id)
            if fresh is None:
                return
            r = fresh
        if await self._probe_port(address):
            first = r.facts.first_ready_at is None
            changes: dict[str, object] = {"last_probe_ok_at": now, "probe_failures": 0}
            if first:
                changes["first_ready_at"] = now
            event = ("ready", f"replica {r.id} ready") if first else None
            hw = self.settings.catalog.hardware.get(ep.hardware) if ep is not None else None
            price = hw.cents_per_minute if hw is not None else (ep.cents_per_minute if ep else Decimal(0))
            ok = await asyncio.to_thread(
                self.store.record_probe_ok, r, now, event, changes, owner=ep.owner if ep else "",
                hardware=ep.hardware if ep else "", cents_per_minute=price, max_gap_s=self.max_gap_s)
            if ok and first:
                failpoints.hit("after_first_probe")
            if ok and first and ep is not None:
                self._backoff.pop(ep.id, None)
                ep_now = await asyncio.to_thread(self.store.get_endpoint, ep.id, include_deleted=True)
                if ep_now is not None and ep_now.failures_before_ready:
                    await asyncio.to_thread(self.store.update_endpoint, ep_now, now, None,
                                            failures_before_ready=0)
            return
        if r.facts.first_ready_at is None:
            await self._check_start_timeout(r, handle, now)
            return
        failures = r.facts.probe_failures + 1
        # Seen not ready: its billing interval ends at its last good probe; the next good one opens anew.
        await asyncio.to_thread(self.store.close_intervals, r.id, "probe failed")
        if failures >= self.settings.probe_failure_threshold:
            await asyncio.to_thread(
                self.store.update_replica, r, now,
                ("unhealthy", f"replica {r.id} failed {failures} probes in a row; replacing it"),
                probe_failures=failures, stop_requested_at=now, stop_reason="unhealthy")
        else:
            await asyncio.to_thread(self.store.update_replica, r, now, None, probe_failures=failures)

    async def _check_start_timeout(self, r: Replica, handle: Handle, now: datetime) -> None:
        launched = r.facts.launched_at
        if launched is not None and (now - launched).total_seconds() > START_TIMEOUT_S:
            await asyncio.to_thread(
                self.store.update_replica, r, now,
                ("failed", f"replica {r.id} not ready after {START_TIMEOUT_S:.0f} s; replacing it"),
                stop_requested_at=now, stop_reason="start timeout")

    async def settle(self) -> None:
        """Wait for the stops this loop started in the background (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop(self, r: Replica, handle: Handle) -> None:
        if r.id in self._stopping:
            return
        self._stopping.add(r.id)
        try:
            code = await asyncio.to_thread(self.runtime.stop, handle, STOP_GRACE_S)
            if code is None and (await asyncio.to_thread(self.runtime.poll, handle)).running:
                # It outlived SIGKILL (e.g. stuck in the kernel): it keeps its slots and stays
                # STOPPING, and the next pass tries again. Never record a stop that did not happen.
                log.error("replica %s (pid %s) did not stop; will retry", r.id, handle.pid)
                return
            fresh = await asyncio.to_thread(self.store.get_replica, r.id)
            if fresh is not None and fresh.facts.stopped_at is None:
                now = self.clock.now()
                ok = await asyncio.to_thread(
                    self.store.update_replica, fresh, now,
                    ("stopped", f"replica {r.id} stopped ({fresh.stop_reason or 'requested'})"),
                    stopped_at=now, exit_code=code)
                if ok and fresh.stop_reason == "start timeout":
                    ep = await asyncio.to_thread(self.store.get_endpoint, fresh.endpoint_id, include_deleted=True)
                    if ep is not None:
                        await self._count_failure(ep, fresh, now, f"replica {r.id} never became ready: "
                                                                  f"{log_tail(fresh.log_path)}")
        finally:
            self._stopping.discard(r.id)
            self.wake.set()

    # endpoints -----------------------------------------------------------------

    def _should_run(self, ep: Endpoint) -> bool:
        return ep.intent is Intent.RUN and ep.deleted_at is None and ep.state is not EndpointState.ERROR

    async def _converge(self, endpoints: list[Endpoint]) -> None:
        """Scale down what runs too much, then let the queue policy place what is missing."""
        now = self.clock.now()
        live = await asyncio.to_thread(self.store.live_replicas)
        for ep in endpoints:
            active = [r for r in live if r.endpoint_id == ep.id and r.facts.stop_requested_at is None]
            desired = ep.within_bounds(ep.desired_replicas) if self._should_run(ep) else 0
            if len(active) > desired:
                await self._request_stops(ep, active, len(active) - desired, now)
        live = await asyncio.to_thread(self.store.live_replicas)

        nodes = self.runtime.nodes()
        index = FleetIndex.build(node_views(nodes, live))
        catalog = self.settings.catalog
        demands: list[Demand] = []
        usage: dict[str, int] = {}
        self._unplaceable.clear()
        for ep in endpoints:
            hw = catalog.hardware.get(ep.hardware)
            active = [r for r in live if r.endpoint_id == ep.id and r.facts.stop_requested_at is None]
            if hw is not None and not hw.is_cpu:  # quotas cap GPUs, not CPU slots
                usage[ep.owner] = usage.get(ep.owner, 0) + hw.gpu_count * len(active)
            if not self._should_run(ep):
                self._backoff.pop(ep.id, None)  # stopped or in ERROR: a start begins afresh, at once
                continue
            if self._backing_off(ep, now):
                continue
            model = catalog.models.get(ep.model)
            if hw is None or model is None or engine_for(catalog, model, hw, nodes) is None:
                self._unplaceable[ep.id] = f"no engine here can run {ep.model} on {ep.hardware}"
                continue
            # Surplus, least valuable first: not ready before ready, newest before oldest.
            ordered = sorted(active, key=lambda r: (r.status is ReplicaStatus.READY, -r.created_at.timestamp()))
            surplus = ordered[: max(0, len(active) - ep.min_replicas)]
            demands.append(Demand(
                endpoint_id=ep.id, owner=ep.owner, pool=hw.gpu_type, gpus=hw.gpu_count,
                min_replicas=ep.min_replicas, active=len(active),
                desired=ep.within_bounds(ep.desired_replicas),
                min_queued_at=ep.min_queued_at, created_at=ep.created_at, quota_applies=not hw.is_cpu,
                surplus=tuple(SurplusReplica(r.id, r.node or "", r.slots) for r in surplus),
            ))
        releasing = [SurplusReplica(r.id, r.node, r.slots)
                     for r in live if r.facts.stop_requested_at is not None and r.node]
        decided = plan(index, demands, await asyncio.to_thread(self.store.quotas), usage, releasing)
        self._plan = decided

        by_id = {e.id: e for e in endpoints}
        for replica_id, for_endpoint in decided.drains:
            r = next((x for x in live if x.id == replica_id), None)
            head = by_id.get(for_endpoint)
            if r is None or head is None:
                continue
            reason = f"yielded to the queued minimum of {head.name}"
            await asyncio.to_thread(
                self.store.update_replica, r, now, ("yielded", f"replica {r.id} drains: {reason}"),
                stop_requested_at=now, stop_reason=reason)
            failpoints.hit("after_stop_request")
        for endpoint_id, placements in decided.placements.items():
            ep = by_id[endpoint_id]
            for p in placements:
                await self._create_replica(ep, p, nodes, now)
            self._unplaceable.pop(endpoint_id, None)
        for endpoint_id, reason in decided.reasons.items():
            self._unplaceable[endpoint_id] = reason
        if decided.drains or decided.placements:
            self.wake.set()

    def _backing_off(self, ep: Endpoint, now: datetime) -> bool:
        b = self._backoff.get(ep.id)
        return b is not None and now < b.until

    async def _request_stops(self, ep: Endpoint, active: list[Replica], n: int, now: datetime) -> None:
        # Stop the least useful first: not-ready before ready, newest before oldest.
        order = sorted(active, key=lambda r: (r.status is ReplicaStatus.READY, -r.created_at.timestamp()))
        reason = "endpoint stopped" if ep.intent is Intent.STOP or ep.deleted_at else "scaled down"
        for r in order[:n]:
            await asyncio.to_thread(
                self.store.update_replica, r, now, ("stopping", f"replica {r.id} stopping: {reason}"),
                stop_requested_at=now, stop_reason=reason)
            failpoints.hit("after_stop_request")
        self.wake.set()

    async def _create_replica(self, ep: Endpoint, p: Placement, nodes: list[Node], now: datetime) -> None:
        hw = self.settings.catalog.hardware[ep.hardware]
        model = self.settings.catalog.models[ep.model]
        engine = engine_for(self.settings.catalog, model, hw, [n for n in nodes if n.name == p.node]) or hw.engine
        replica = Replica(
            id=f"r-{uuid.uuid4().hex[:12]}", endpoint_id=ep.id, engine=engine,
            node=p.node, slots=tuple(p.slots),
            token=secrets.token_urlsafe(24), address=None, pid=None, process_started=None,
            log_path=None, created_at=now,
            facts=ReplicaFacts(now, None, None, None, 0, None, None, None),
            stop_reason=None, version=1,
        )
        await asyncio.to_thread(
            self.store.insert_replica, replica,
            ("placed", f"replica {replica.id} placed on node {p.node} "
                                f"(slots {','.join(map(str, replica.slots))})"))
        failpoints.hit("after_replica_row")
        await self._launch(ep, replica)

    async def _settle_endpoints(self, endpoints: list[Endpoint]) -> None:
        """Record each endpoint's state, counts, queue position and message."""
        now = self.clock.now()
        live = await asyncio.to_thread(self.store.live_replicas)
        decided = self._plan
        for ep in endpoints:
            mine = [r for r in live if r.endpoint_id == ep.id]
            if ep.deleted_at is not None and not mine:
                continue
            status = Counter(r.status for r in mine)
            desired = ep.desired_replicas if self._should_run(ep) else 0
            counts = ReplicaCounts(
                desired=desired,
                ready=status[ReplicaStatus.READY],
                starting=status[ReplicaStatus.STARTING] + status[ReplicaStatus.PLACED],
                queued=decided.queued.get(ep.id, 0) if self._should_run(ep) else 0,
                stopping=status[ReplicaStatus.STOPPING],
            )
            active = counts.ready + counts.starting
            try:
                await self._update_state(ep, counts, decided.positions.get(ep.id), active, now)
            except Exception:
                log.exception("updating endpoint %s failed", ep.id)
    async def _launch(self, ep: Endpoint, r: Replica) -> None:
        now = self.clock.now()
        log_path = self.settings.replicas_dir / r.id / "engine.log"
        try:
            model = self.settings.catalog.models[ep.model]
            spec = engine(r.engine)
            path = None if spec.weights is Weights.NONE else \
                await asyncio.to_thread(ensure_builtin, self.settings.models_dir, model)
            binding = self.runtime.binding(r.id, r.node or "")
            argv = spec.command(EngineLaunch(
                model_dir=path, served_model_name=ep.name, replica_id=r.id,
                instance=self.runtime.instance, port_file=binding.port_file, host=binding.host,
                options=self.settings.engine_options.get(r.engine, {}), model_name=model.name,
                gpu_count=len(r.slots) or 1))
            node = next((n for n in self.runtime.nodes() if n.name == r.node), None)
            env = {"DEDICATE_REPLICA_TOKEN": r.token, "OMP_NUM_THREADS": "1",
                   "TOKENIZERS_PARALLELISM": "false"}
            if node is not None and node.gpu_type != "cpu" and not node.declared:
                env.update(gpu_env(node, list(r.slots)))
            else:
                env["CUDA_VISIBLE_DEVICES"] = ""
            handle = await asyncio.to_thread(self.runtime.launch, LaunchSpec(
                replica_id=r.id, argv=argv, env=env, log_path=log_path, node=r.node or "",
                slots=r.slots))
        except Exception as exc:
            log.exception("launching replica %s failed", r.id)
            msg = f"replica {r.id} could not be launched: {exc}"
            ok = await asyncio.to_thread(
                self.store.update_replica, r, now, ("failed", msg),
                stop_requested_at=now, stop_reason="launch failed", stopped_at=now)
            if ok:
                await self._count_failure(ep, r, now, msg)
            return
        failpoints.hit("after_launch")
        await asyncio.to_thread(
            self.store.update_replica, r, now,
            ("launched", f"replica {r.id} launched (pid {handle.pid}, engine {r.engine})"),
            pid=handle.pid, process_started=handle.started, launched_at=now,
            log_path=str(Path(log_path)))

    async def _update_state(self, ep: Endpoint, counts: ReplicaCounts, position: int | None, active: int,
                            now: datetime) -> None:
        fresh = await asyncio.to_thread(self.store.get_endpoint, ep.id, include_deleted=True)
        if fresh is None:
            return
        new = next_state(fresh.state, fresh.intent, fresh.min_replicas, counts,
                         fresh.failures_before_ready, self.settings.max_failures_before_ready)
        try:
            check_transition(fresh.state, new)
        except Conflict:
            log.warning("endpoint %s: refusing %s → %s", fresh.id, fresh.state, new)
            new = fresh.state
        message = self._message(fresh, new, counts, position, now)
        changes: dict[str, object] = {}
        if message != fresh.status_message:
            changes["status_message"] = message
        if counts.queued != fresh.queued_replicas:
            changes["queued_replicas"] = counts.queued
        if position != fresh.queue_position:
            changes["queue_position"] = position
        if fresh.min_queued_at is not None and active >= fresh.min_replicas:
            changes["min_queued_at"] = None  # its minimum is placed: it left the queue
        event = None
        if new != fresh.state:
            changes.update(state=new, state_changed_at=now)
            event = ("state", f"{fresh.state} → {new}: {message}")
        elif position is not None and position != fresh.queue_position:
            event = ("queued", message)
        if changes:
            await asyncio.to_thread(self.store.update_endpoint, fresh, now, event, **changes)

    def _message(self, ep: Endpoint, state: EndpointState, c: ReplicaCounts, position: int | None,
                 now: datetime) -> str:
        if state is EndpointState.ERROR:
            return ep.status_message if ep.status_message.startswith("error") else \
                f"error: replicas failed {ep.failures_before_ready} times before becoming ready; " \
                f"last: {ep.status_message}; fix the cause and start the endpoint again"
        if state is EndpointState.STOPPED:
            return "stopped"
        if state is EndpointState.STOPPING:
            return f"stopping {c.live} replica(s)"
        hw = self.settings.catalog.hardware.get(ep.hardware)
        shape = f"{hw.gpu_count}x {hw.gpu_type}" if hw else ep.hardware
        why = self._unplaceable.get(ep.id, "waiting for capacity")
        if position is not None and position > 0:
            return f"queued: position {position} for {c.queued} replica(s) of {shape}; {why}"
        if c.desired == 0 and c.live == 0 and not c.queued:
            return "scaled to zero: no replica runs and nothing is billed; the next request starts one"
        parts = [f"{c.ready} of {c.desired} replicas ready"]
        if c.starting:
            parts.append(f"{c.starting} starting")
        if c.queued:
            parts.append(f"{c.queued} queued: {why}")
        b = self._backoff.get(ep.id)
        if b is not None and now < b.until and c.ready < c.desired:
            wait = (b.until - now).total_seconds()
            parts.append(f"retrying in {wait:.0f} s after {ep.failures_before_ready} failure(s)")
        return "; ".join(parts)

    # shutdown --------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every replica of this instance, closing its billing facts; intents stay.

        Only the lease holder does this: a standby server that shuts down leaves the
        replicas to the holder.
        """
        if not self.is_leader:
            await self._http.aclose()
            return
        now = self.clock.now()
        live = await asyncio.to_thread(self.store.live_replicas)
        stops = []
        for r in live:
            if r.facts.stop_requested_at is None:
                await asyncio.to_thread(self.store.update_replica, r, now, None,
                                        stop_requested_at=now, stop_reason="server shutdown")
            fresh = await asyncio.to_thread(self.store.get_replica, r.id)
            if fresh is None:
                continue
            if fresh.pid is None:
                await asyncio.to_thread(self.store.update_replica, fresh, now, None, stopped_at=now)
                continue
            stops.append(self._stop(fresh, Handle(fresh.pid, fresh.process_started or "")))
        await asyncio.gather(*stops, *list(self._tasks), return_exceptions=True)
        if self.is_leader:
            await asyncio.to_thread(self.base_store.release_lease, LEASE, self.holder)
        await self._http.aclose()
