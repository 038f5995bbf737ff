"""The autoscaling loop and the idle auto-shutdown: one level-triggered pass every few seconds.

Each pass re-reads the endpoints, the gateways' signals (``Store.signals``) and
the live replicas, asks the engines of ready replicas for their own queue and
KV-cache figures (``/metrics``, outside any transaction), then per endpoint:

- stops it if it is idle past its ``inactive_timeout`` (``autoscaler/idle.py``):
  intent STOP, state STOPPING and an event saying why;
- otherwise, if it may autoscale (``min_replicas < max_replicas``), calls the
  pure policy (``autoscaler/policy.py``) with the state it stored last time, and
  writes the new desired count and state with one guarded write; a change of
  the desired count also writes a ``scaled`` event with the policy's reason
  ("3 → 5: in-flight 14 over target 3 per replica") and wakes the reconciler,
  which places what capacity allows and queues the rest.

It acts only while this process holds the reconciler lease, and writes through
the reconciler's fenced store: a process that lost the lease cannot scale.
A guarded write that loses a race (a PATCH of the bounds, the reconciler)
changes nothing; the next pass decides again from what is then stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import httpx

from dedicate.autoscaler.idle import idle_reason
from dedicate.autoscaler.policy import Inputs, PolicyConfig, PolicyState, Target, decide
from dedicate.clock import Clock
from dedicate.control.capacity import engine_for
from dedicate.domain import latency
from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.records import Endpoint, EndpointSignals, Replica
from dedicate.domain.replicas import ReplicaStatus
from dedicate.domain.scaling import ScalingRules
from dedicate.domain.status import replica_counts
from dedicate.engines.metrics import EngineSample
from dedicate.engines.registry import engine
from dedicate.runtimes.base import Node
from dedicate.settings import Settings
from dedicate.store.base import StaleLease
from dedicate.store.repos import Store

log = logging.getLogger("dedicate.autoscaler")
METRIC_MINUTES = 3  # a latency or throughput metric is read over this many of the gateways' minutes


def target_for(settings: Settings, nodes: Sequence[Node], ep: Endpoint) -> Target:
    """The endpoint's target concurrency per replica: the user's, or the default for its hardware."""
    if ep.target_concurrency is not None:
        return Target(ep.target_concurrency, "user", "set by the user")
    catalog = settings.catalog
    hw, model = catalog.hardware.get(ep.hardware), catalog.models.get(ep.model)
    if hw is None or model is None:
        return Target(1.0, "default", "the hardware or model left the catalog")
    name = engine_for(catalog, model, hw, nodes) or hw.engine
    return engine(name).default_concurrency(hw, model, settings.engine_options.get(name, {}))


Scrape = Callable[[Replica], Awaitable[EngineSample | None]]


# the loop -------------------------------------------------------------------------------------


class Autoscaler:
    def __init__(self, store: Store, settings: Settings, clock: Clock, nodes: Callable[[], Sequence[Node]],
                 leader: Callable[[], Store | None], wake: Callable[[], None],
                 scrape: Scrape | None = None) -> None:
        """``leader`` gives the fenced store while this process holds the reconciler lease, else None."""
        self.store = store
        self.settings = settings
        self.config = settings.autoscaling
        self.clock = clock
        self.nodes = nodes
        self.leader = leader
        self.wake = wake
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(1.0))
        self._scrape = scrape or self._http_scrape

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.pass_once()
            except StaleLease:
                log.warning("lost the reconciler lease mid-pass; not scaling until it is held again")
            except Exception:  # a pass must never kill the loop
                log.exception("autoscaling pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.interval_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _http_scrape(self, r: Replica) -> EngineSample | None:
        if r.url is None:
            return None
        try:
            resp = await self._http.get(f"{r.url}/metrics", headers={"authorization": f"Bearer {r.token}"})
        except httpx.HTTPError:
            return None
        return engine(r.engine).parse_metrics(resp.text) if resp.status_code == 200 else None

    async def pass_once(self) -> None:
        fenced = self.leader()
        if fenced is None:
            return
        now = self.clock.now()
        endpoints = await asyncio.to_thread(self.store.active_endpoints)  # stopped ones have nothing to scale
        signals = await asyncio.to_thread(self.store.signals, now, self.config.signal_fresh_s)
        live = await asyncio.to_thread(self.store.live_replicas)
        mine: dict[str, list[Replica]] = {}
        for r in live:
            mine.setdefault(r.endpoint_id, []).append(r)
        scaling = {e.id for e in endpoints if e.intent is Intent.RUN and e.min_replicas < e.max_replicas}
        samples = await self._engine_samples([r for r in live if r.endpoint_id in scaling
                                              and r.status is ReplicaStatus.READY])
        nodes = self.nodes()
        for ep in endpoints:
            try:
                await self._endpoint(fenced, ep, signals.get(ep.id), mine.get(ep.id, []), samples, nodes, now)
            except StaleLease:
                raise
            except Exception:
                log.exception("autoscaling endpoint %s failed", ep.id)

    async def _observed(self, ep: Endpoint, rules: ScalingRules, now: datetime) -> tuple[float | None, float | None]:
        """What the gateways saw of ``ep`` in the last ``METRIC_MINUTES`` minutes, for a latency or
        throughput metric: (latency in ms at its percentile, output tokens per second); None without requests."""
        m = rules.metric
        if m is None or m.name not in ("ttft", "e2e_latency", "throughput_per_replica"):
            return None, None
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=METRIC_MINUTES - 1)
        minutes = await asyncio.to_thread(self.store.minutes, [ep.id], start, now + timedelta(minutes=1))
        if not any(x.requests for x in minutes):
            return None, None
        if m.name == "throughput_per_replica":
            return None, sum(x.tokens_out for x in minutes) / max((now - start).total_seconds(), 1.0)
        histogram = latency.merged(x.ttft if m.name == "ttft" else x.latency for x in minutes)
        return latency.percentile(histogram, m.percentile or 95), None

    async def _engine_samples(self, ready: list[Replica]) -> dict[str, EngineSample]:
        if not self.config.scrape_engines or not ready:
            return {}
        got = await asyncio.gather(*(self._scrape(r) for r in ready), return_exceptions=True)
        return {r.id: s for r, s in zip(ready, got, strict=True) if isinstance(s, EngineSample)}

    async def _endpoint(self, store: Store, ep: Endpoint, sig: EndpointSignals | None, replicas: list[Replica],
                        samples: dict[str, EngineSample], nodes: Sequence[Node], now: datetime) -> None:
        if ep.intent is not Intent.RUN or ep.state is EndpointState.ERROR:
            if ep.intent is Intent.STOP and ep.autoscale_state is not None:
                # A start begins afresh: it goes back to min_replicas, with no window to hold.
                await asyncio.to_thread(store.update_endpoint, ep, now, None, autoscale_state=None)
            return
        busy = sig is not None and (sig.in_flight > 0 or sig.queued > 0)
        last = max((t for t in (ep.last_request_at, sig.last_request_at if sig else None) if t is not None),
                   default=None)
        reason = idle_reason(state=ep.state, intent=ep.intent, inactive_timeout=ep.inactive_timeout,
                             started_at=ep.state_changed_at, last_request_at=last, busy=busy, now=now)
        if reason is not None:
            if await asyncio.to_thread(
                    store.change_state, ep, now, EndpointState.STOPPING, ("idle", f"stopped: {reason}"),
                    intent=Intent.STOP, status_message=f"stopping: {reason}", autoscale_state=None):
                log.info("endpoint %s stopped: %s", ep.name, reason)
                self.wake()
            return
        if ep.min_replicas >= ep.max_replicas:
            return  # nothing to decide: the bounds fix the count
        counts = replica_counts(ep, replicas)  # counted as the reconciler and the API count
        reported = [samples[r.id] for r in replicas if r.id in samples and r.status is ReplicaStatus.READY]
        waiting = [s.waiting for s in reported if s.waiting is not None]
        kv = [s.kv_cache_usage for s in reported if s.kv_cache_usage is not None]
        rules = ScalingRules.from_json(ep.scaling_rules)
        latency_ms, tokens_per_s = await self._observed(ep, rules, now)
        inputs = Inputs(
            desired=ep.desired_replicas, in_flight=sig.in_flight if sig else 0, held=sig.queued if sig else 0,
            ready=counts.ready, starting=counts.starting, engine_waiting=sum(waiting) if waiting else None,
            kv_cache_usage=max(kv) if kv else None, peak_load=sig.peak_load if sig else 0,
            latency_ms=latency_ms, tokens_per_s=tokens_per_s)
        target = target_for(self.settings, nodes, ep)
        config = PolicyConfig(ep.min_replicas, ep.max_replicas, target.value,
                              stabilisation_s=self.config.stabilisation_s if rules.down_window_s is None
                              else rules.down_window_s,
                              kv_cache_target=self.config.kv_cache_target, bucket_s=self.config.bucket_s,
                              up_window_s=rules.up_window_s or 0.0, zero_window_s=rules.zero_window_s,
                              up_rate=rules.up, down_rate=rules.down, metric=rules.metric)
        decision = decide(inputs, PolicyState.from_json(ep.autoscale_state), now, config)
        changes: dict[str, object] = {}
        if decision.desired != ep.desired_replicas:
            changes["desired_replicas"] = decision.desired
        state = decision.state.to_json()
        if state != ep.autoscale_state:
            changes["autoscale_state"] = state
        if not changes:
            return
        event = ("scaled", decision.explanation) if decision.explanation and "desired_replicas" in changes else None
        ok = await asyncio.to_thread(store.update_endpoint, ep, now, event, **changes)
        if ok and event is not None:
            log.info("endpoint %s %s", ep.name, decision.explanation)
            self.wake()
