"""Autoscaling benchmark: dedicate's policy against two baselines, replaying a real request trace.

Run from the repository root::

    .venv/bin/python bench/autoscale.py [--trace PATH] [--slo-ms 1000] [--startup-s 30] ...
    .venv/bin/python bench/autoscale.py --real [--slice-start-s 600 --slice-s 600 --compress 5]

**The virtual replay** (default) is a discrete-event simulation on a virtual clock. The real
policy code (``dedicate.autoscaler.policy.decide``, its state round-tripped through JSON on
every pass as the control loop persists it) and the real placement code
(``dedicate.scheduler.queue.plan`` over a ``FleetIndex``) drive a model of replicas that
behaves like the synthetic engine: at most ``--max-streams`` requests generate at once, the
rest wait in the replica's FIFO queue; the first token comes ``--ttft-ms`` after a request
gets a slot, then ``--tokens-per-s`` tokens a second; a new replica is ready
``--startup-s`` after the reconciler launches it. The gateway is modelled too: it sends each
request to the less busy of two random ready replicas (a seeded generator), holds requests
while no replica is ready, and writes its in-flight and held counts, with the most of them at
once since its previous write, every ``--signal-s`` (the Ray-like policy reads the counts only).
An hour of trace replays in a few seconds and the same input gives the same figures.

The policies, on the same replay:

- ``dedicate``: the product's policy, target concurrency from the engine (``--max-streams``
  unless ``--target`` is given), 5 minute down-scale stabilisation, clamped to [min, max].
- ``fixed_peak``: a fixed fleet sized for the trace's peak: the most requests ever in flight
  at once (with no waiting at all) over the streams of one replica, rounded up.
- ``ray_like``: Ray Serve's default policy: target 2 requests in flight per replica over a
  30 s look-back average, scaling up after 30 s and down after 600 s of agreement.

Figures: replica-minutes (the bill: each replica from its first ready moment to its stop
request, as the billing ledger counts it), time to first token (p50, p99) and requests whose
time to first token exceeded the SLO. The first ``--warmup-s`` of the trace is replayed but
not counted, so every policy starts measured from its own steady state. Every policy starts
with the fixed fleet's size ready, and takes over from there. Two floors are printed beside
them: a clairvoyant fleet with exactly what is in flight at every instant, and one that obeys
the stabilisation rule; both let no request wait and start replicas instantly. A second
scenario, a day built from the trace (``--day-copies``, ``--day-trough``), follows.

**The real replay** (``--real``) takes a slice of the trace, compresses time by
``--compress`` (arrivals, token rates, start-up delay, the policy's window and its
passes, the gateway's signal writes and the reconciler's passes all run that much faster),
and sends it through a real ``dedicate up`` server's gateway to real synthetic-engine replicas
on a declared logical node, in real time. It prints the same
figures for the slice (converted back to trace time) next to the virtual replay of the same
slice with the same compressed parameters, and their difference.

The last line printed is one JSON object: per policy, ``replica_minutes``, ``ttft_p50_ms``,
``ttft_p99_ms`` and ``slo_violations``; ``bounds`` (the two floors), ``day`` (the same for the
day) and, with ``--real``, ``slice``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_TRACE, Request, load_trace, percentile

from dedicate.autoscaler.policy import Inputs, PolicyConfig, PolicyState, decide
from dedicate.scheduler.placement import FleetIndex, NodeView
from dedicate.scheduler.queue import Demand, SurplusReplica, plan
from dedicate.settings import AutoscalingSettings

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
POOL = "h100-80gb"


# the trace -------------------------------------------------------------------------------------


def day_trace(requests: Sequence[Request], copies: int, trough: float, seed: int) -> list[Request]:
    """The trace repeated ``copies`` times back to back, thinned to follow a daily curve.

    A request at time ``t`` of the whole is kept with probability ``trough + (1 - trough) x
    (1 - cos(2 pi t / length)) / 2``: the night's traffic is ``trough`` of the trace's, midday's all
    of it. Within each copy the trace's own bursts stay as they were. Seeded: the same arguments
    give the same requests.
    """
    if not requests or copies <= 0:
        return []
    span = requests[-1].at
    length = span * copies
    rng = random.Random(seed)
    out = []
    for c in range(copies):
        for r in requests:
            at = c * span + r.at
            keep = trough + (1 - trough) * (1 - math.cos(2 * math.pi * at / length)) / 2
            if rng.random() < keep:
                out.append(Request(at, r.prompt_tokens, r.output_tokens))
    return out


# the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaModel:
    """A replica that behaves like the synthetic engine."""

    ttft_s: float = 0.1
    tokens_per_s: float = 25.0
    max_streams: int = 16
    startup_s: float = 30.0

    def service_s(self, r: Request) -> float:
        return self.ttft_s + r.output_tokens / self.tokens_per_s


@dataclass(frozen=True)
class Timing:
    interval_s: float = 2.0  # an autoscaling pass
    signal_s: float = 2.0  # the gateway writes its counts
    reconcile_s: float = 1.0  # from a new desired count to the replica's launch


@dataclass(frozen=True)
class Fleet:
    nodes: int = 8
    gpus_per_node: int = 8
    gpus_per_replica: int = 1


def in_flight_steps(requests: Sequence[Request], model: ReplicaModel) -> list[tuple[float, int]]:
    """(time, requests in flight just after it) at each arrival and finish, if none ever waited.

    A finish and an arrival at the same instant: the finish first.
    """
    events = sorted([(r.at, 1) for r in requests] + [(r.at + model.service_s(r), -1) for r in requests])
    out, now = [], 0
    for t, d in events:
        now += d
        out.append((t, now))
    return out


def peak_concurrency(requests: Sequence[Request], model: ReplicaModel) -> int:
    """The most requests in flight at once if none ever waited."""
    return max((n for _, n in in_flight_steps(requests, model)), default=0)


# the policies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    at: float
    in_flight: int
    held: int
    ready: int
    starting: int
    engine_waiting: int
    desired: int
    peak_load: int = 0  # the most in flight + held at once since the previous sample


class Controller:
    name = "controller"
    initial = 1  # replicas ready when the replay starts (``controllers`` sets the fixed fleet's size)

    def decide(self, o: Observation) -> int:
        raise NotImplementedError


class FixedController(Controller):
    name = "fixed_peak"

    def __init__(self, replicas: int) -> None:
        self.initial = replicas

    def decide(self, o: Observation) -> int:
        return self.initial


class DedicateController(Controller):
    """The product's policy; its state goes through JSON on every pass, as the control loop stores it."""

    name = "dedicate"

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.state_json: str | None = None
        self.events: list[str] = []

    def decide(self, o: Observation) -> int:
        inputs = Inputs(desired=o.desired, in_flight=o.in_flight, held=o.held, ready=o.ready,
                        starting=o.starting, engine_waiting=o.engine_waiting, peak_load=o.peak_load)
        d = decide(inputs, PolicyState.from_json(self.state_json), EPOCH + timedelta(seconds=o.at), self.config)
        self.state_json = d.state.to_json()
        if d.explanation:
            self.events.append(f"{o.at:8.1f} s  {d.explanation}")
        return d.desired


class RayLikeController(Controller):
    """Ray Serve's default autoscaling: target 2 ongoing requests, 30 s up / 600 s down delays.

    Ray averages each replica's ongoing requests over a 30 s look-back, wants
    ``ceil(total / target)`` replicas, and acts only after the wish has pointed the same way
    for the whole delay (a decision counter, reset when it changes direction). From zero
    replicas it scales up at once.
    """

    name = "ray_like"

    def __init__(self, min_replicas: int, max_replicas: int, interval_s: float, target: float = 2.0,
                 upscale_delay_s: float = 30.0, downscale_delay_s: float = 600.0,
                 look_back_s: float = 30.0) -> None:
        self.min, self.max, self.interval = min_replicas, max_replicas, interval_s
        self.target, self.up, self.down, self.look_back = target, upscale_delay_s, downscale_delay_s, look_back_s
        self.samples: deque[tuple[float, int]] = deque()
        self.counter = 0

    def decide(self, o: Observation) -> int:
        self.samples.append((o.at, o.in_flight + o.held))
        while self.samples and self.samples[0][0] < o.at - self.look_back:
            self.samples.popleft()
        avg = sum(n for _, n in self.samples) / len(self.samples)
        wanted = min(max(math.ceil(avg / self.target - 1e-9), self.min), self.max)
        current = o.desired
        if current == 0 and o.held > 0:
            self.counter = 0
            return max(1, wanted)
        if wanted > current:
            self.counter = max(self.counter, 0) + 1
            if self.counter * self.interval >= self.up:
                self.counter = 0
                return wanted
        elif wanted < current:
            self.counter = min(self.counter, 0) - 1
            if -self.counter * self.interval >= self.down:
                self.counter = 0
                return wanted
        else:
            self.counter = 0
        return current


# the replay ------------------------------------------------------------------------------------


@dataclass(eq=False)
class SimReplica:
    id: str
    created_at: float
    node: str
    slots: tuple[int, ...]
    ready_at: float
    ready: bool = False
    stop_requested_at: float | None = None
    gone: bool = False
    running: int = 0
    waiting: deque[int] = field(default_factory=deque)

    @property
    def in_flight(self) -> int:
        return self.running + len(self.waiting)


@dataclass
class Result:
    name: str
    replica_seconds: float
    ttfts: list[float]
    slo_s: float
    scale_events: int
    peak_replicas: int
    events: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, float | int]:
        xs = sorted(self.ttfts)

        def ms(q: float) -> float:
            return round(percentile(xs, q) * 1000, 1) if xs else 0.0

        return {"replica_minutes": round(self.replica_seconds / 60, 1),
                "ttft_p50_ms": ms(50), "ttft_p99_ms": ms(99),
                "slo_violations": sum(1 for x in xs if x > self.slo_s)}


ARRIVE, FIRST_TOKEN, FINISH, READY, SAMPLE, TICK = range(6)


class Replay:
    """One policy over one trace on a virtual clock."""

    def __init__(self, requests: Sequence[Request], model: ReplicaModel, timing: Timing, fleet: Fleet,
                 controller: Controller, *, min_replicas: int, max_replicas: int, seed: int = 7,
                 warmup_s: float = 0.0, slo_s: float = 1.0) -> None:
        self.requests = requests
        self.model, self.timing, self.fleet = model, timing, fleet
        self.controller = controller
        self.min, self.max = min_replicas, max_replicas
        self.rng = random.Random(seed)
        self.warmup, self.slo = warmup_s, slo_s
        self.end = (requests[-1].at if requests else 0.0)
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.replicas: list[SimReplica] = []
        self.held: deque[int] = deque()
        self.first_token: dict[int, float] = {}
        self.desired = controller.initial
        self.sample = Observation(0.0, 0, 0, 0, 0, 0, self.desired)
        self.scale_events = 0
        self.peak = 0
        self.load = 0  # requests in flight or held, as the gateway counts them
        self.peak_load = 0  # the most at once since the last sample
        self.nodes = [NodeView(f"node-{i:02d}", POOL, fleet.gpus_per_node, tuple(range(fleet.gpus_per_node)))
                      for i in range(fleet.nodes)]

    # events

    def push(self, at: float, kind: int, data: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, data))

    def run(self) -> Result:
        for i, r in enumerate(self.requests):
            self.push(r.at, ARRIVE, i)
        self.push(0.0, SAMPLE, None)
        self.push(self.timing.interval_s / 2, TICK, None)
        self.reconcile(0.0, initial=True)
        while self.heap:
            at, _, kind, data = heapq.heappop(self.heap)
            if kind in (SAMPLE, TICK) and at > self.end:
                continue
            if kind == ARRIVE:
                assert isinstance(data, int)
                self.load += 1
                self.peak_load = max(self.peak_load, self.load)
                self.dispatch(at, data)
            elif kind == FIRST_TOKEN:
                assert isinstance(data, int)
                self.first_token[data] = at
            elif kind == FINISH:
                assert isinstance(data, SimReplica)
                self.load -= 1
                self.finish(at, data)
            elif kind == READY:
                assert isinstance(data, SimReplica)
                self.become_ready(at, data)
            elif kind == SAMPLE:
                self.take_sample(at)
                self.push(at + self.timing.signal_s, SAMPLE, None)
            elif kind == TICK:
                self.tick(at)
                self.push(at + self.timing.interval_s, TICK, None)
        return self.result()

    # the gateway

    def routable(self) -> list[SimReplica]:
        return [r for r in self.replicas if r.ready and r.stop_requested_at is None]

    def dispatch(self, at: float, i: int) -> None:
        pool = self.routable()
        if not pool:
            self.held.append(i)
            return
        if len(pool) == 1:
            target = pool[0]
        else:
            a, b = self.rng.sample(pool, 2)
            target = a if a.in_flight <= b.in_flight else b
        self.admit(at, target, i)

    def admit(self, at: float, r: SimReplica, i: int) -> None:
        if r.running < self.model.max_streams:
            self.start(at, r, i)
        else:
            r.waiting.append(i)

    def start(self, at: float, r: SimReplica, i: int) -> None:
        r.running += 1
        req = self.requests[i]
        self.push(at + self.model.ttft_s, FIRST_TOKEN, i)
        self.push(at + self.model.service_s(req), FINISH, r)

    def finish(self, at: float, r: SimReplica) -> None:
        r.running -= 1
        if r.waiting:
            self.start(at, r, r.waiting.popleft())
        if r.stop_requested_at is not None and r.in_flight == 0:
            r.gone = True

    def become_ready(self, at: float, r: SimReplica) -> None:
        if r.stop_requested_at is not None:
            return
        r.ready = True
        held, self.held = self.held, deque()
        for i in held:
            self.dispatch(at, i)

    def take_sample(self, at: float) -> None:
        live = [r for r in self.replicas if r.stop_requested_at is None]
        self.sample = Observation(
            at, in_flight=sum(r.in_flight for r in self.replicas if not r.gone), held=len(self.held),
            ready=sum(1 for r in live if r.ready), starting=sum(1 for r in live if not r.ready),
            engine_waiting=sum(len(r.waiting) for r in live), desired=self.desired, peak_load=self.peak_load)
        self.peak_load = self.load

    # the control plane

    def tick(self, at: float) -> None:
        o = self.sample
        o = Observation(at, o.in_flight, o.held, o.ready, o.starting, o.engine_waiting, self.desired, o.peak_load)
        desired = min(max(self.controller.decide(o), self.min), self.max)
        if desired != self.desired:
            self.scale_events += 1
            self.desired = desired
        self.reconcile(at)

    def reconcile(self, at: float, initial: bool = False) -> None:
        """The reconciler's pass: stop the surplus (starting and newest first), or place what is missing."""
        active = [r for r in self.replicas if r.stop_requested_at is None]
        ordered = sorted(active, key=lambda r: (r.ready, -r.created_at, r.id))  # least valuable first
        if len(active) > self.desired:
            for r in ordered[: len(active) - self.desired]:
                self.stop(at, r)
            return
        used: dict[str, set[int]] = {}
        for r in self.replicas:
            if not r.gone:
                used.setdefault(r.node, set()).update(r.slots)
        index = FleetIndex.build([NodeView(n.name, n.gpu_type, n.total,
                                           tuple(s for s in range(n.total) if s not in used.get(n.name, set())))
                                  for n in self.nodes])
        surplus = ordered[: max(0, len(active) - self.min)]
        demand = Demand("endpoint", "owner", POOL, self.fleet.gpus_per_replica, self.min, self.desired,
                        len(active), None, EPOCH,
                        tuple(SurplusReplica(r.id, r.node, r.slots) for r in surplus))
        decided = plan(index, [demand])
        for p in decided.placements.get("endpoint", []):
            r = SimReplica(f"r{len(self.replicas):05d}", at, p.node, p.slots,
                           ready_at=at + (0.0 if initial else self.timing.reconcile_s + self.model.startup_s))
            self.replicas.append(r)
            if initial:
                r.ready = True
            else:
                self.push(r.ready_at, READY, r)
        self.peak = max(self.peak, sum(1 for r in self.replicas if r.stop_requested_at is None))

    def stop(self, at: float, r: SimReplica) -> None:
        r.stop_requested_at = at
        waiting, r.waiting = r.waiting, deque()
        for i in waiting:  # the engine refuses what it had queued; the gateway sends it elsewhere
            self.dispatch(at, i)
        if r.in_flight == 0:
            r.gone = True

    # figures

    def result(self) -> Result:
        start, end = self.warmup, self.end
        billed = 0.0
        for r in self.replicas:
            a = max(r.ready_at, start)  # stopped before it was ready: b < a, nothing billed
            b = min(r.stop_requested_at if r.stop_requested_at is not None else end, end)
            billed += max(0.0, b - a)
        ttfts = [self.first_token[i] - r.at for i, r in enumerate(self.requests)
                 if r.at >= start and i in self.first_token]
        events = list(getattr(self.controller, "events", []))
        return Result(self.controller.name, billed, ttfts, self.slo, self.scale_events, self.peak, events)


# running it ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    model: ReplicaModel
    timing: Timing
    fleet: Fleet
    min_replicas: int
    max_replicas: int
    target: float
    stabilisation_s: float
    warmup_s: float
    slo_s: float
    seed: int


def controllers(setup: Setup, requests: Sequence[Request]) -> list[Controller]:
    peak = peak_concurrency(requests, setup.model)
    fixed = min(setup.max_replicas, max(setup.min_replicas, math.ceil(peak / setup.model.max_streams)))
    config = PolicyConfig(setup.min_replicas, setup.max_replicas, setup.target,
                          stabilisation_s=setup.stabilisation_s,
                          bucket_s=AutoscalingSettings(stabilisation_s=setup.stabilisation_s).bucket_s)
    ray_scale = setup.stabilisation_s / 300.0  # compressed replays compress Ray's delays alike
    out: list[Controller] = [
        DedicateController(config), FixedController(fixed),
        RayLikeController(setup.min_replicas, setup.max_replicas, setup.timing.interval_s,
                          upscale_delay_s=30.0 * ray_scale, downscale_delay_s=600.0 * ray_scale,
                          look_back_s=30.0 * ray_scale)]
    for c in out:  # every policy takes over from the fixed fleet, already running
        c.initial = fixed
    return out


def replay_all(setup: Setup, requests: Sequence[Request], only: Collection[str] | None = None) -> list[Result]:
    out = []
    for c in controllers(setup, requests):
        if only is not None and c.name not in only:
            continue
        replay = Replay(requests, setup.model, setup.timing, setup.fleet, c, min_replicas=setup.min_replicas,
                        max_replicas=setup.max_replicas, seed=setup.seed, warmup_s=setup.warmup_s,
                        slo_s=setup.slo_s)
        out.append(replay.run())
    return out


def print_table(results: Sequence[Result], title: str, scale: float = 1.0) -> dict[str, dict[str, float | int]]:
    print(title)
    print(f"  {'policy':<11} {'replica-min':>11} {'ttft p50 ms':>11} {'ttft p99 ms':>11} "
          f"{'> SLO':>7} {'scalings':>8} {'peak':>5}")
    out: dict[str, dict[str, float | int]] = {}
    for r in results:
        f = scaled(r.figures(), scale)
        out[r.name] = f
        print(f"  {r.name:<11} {f['replica_minutes']:>11} {f['ttft_p50_ms']:>11} {f['ttft_p99_ms']:>11} "
              f"{f['slo_violations']:>7} {r.scale_events:>8} {r.peak_replicas:>5}")
    return out


def scaled(f: dict[str, float | int], k: float) -> dict[str, float | int]:
    """Figures of a replay compressed by ``k``, in trace time."""
    if k == 1.0:
        return f
    return {"replica_minutes": round(float(f["replica_minutes"]) * k, 1),
            "ttft_p50_ms": round(float(f["ttft_p50_ms"]) * k, 1),
            "ttft_p99_ms": round(float(f["ttft_p99_ms"]) * k, 1),
            "slo_violations": f["slo_violations"]}


def verdict(figures: dict[str, dict[str, float | int]]) -> list[str]:
    d, fixed, ray = figures["dedicate"], figures["fixed_peak"], figures["ray_like"]
    saving = 1 - float(d["replica_minutes"]) / float(fixed["replica_minutes"]) if fixed["replica_minutes"] else 0.0
    cheaper = d["replica_minutes"] < ray["replica_minutes"]
    return [
        f"  dedicate vs fixed peak fleet: {saving:.0%} fewer replica-minutes (target: at least 25%)"
        f" -> {'met' if saving >= 0.25 else 'NOT met'}",
        f"  dedicate vs ray-like: {d['replica_minutes']} vs {ray['replica_minutes']} replica-minutes, "
        f"p99 {d['ttft_p99_ms']} vs {ray['ttft_p99_ms']} ms -> "
        f"{'met' if cheaper and d['ttft_p99_ms'] <= ray['ttft_p99_ms'] else 'NOT met'}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--ttft-ms", type=float, default=100.0, help="first token after a slot is taken")
    p.add_argument("--tokens-per-s", type=float, default=25.0, help="per stream (the synthetic default)")
    p.add_argument("--max-streams", type=int, default=16, help="streams per replica (the synthetic default)")
    p.add_argument("--startup-s", type=float, default=30.0, help="launch to ready")
    p.add_argument("--target", type=float, default=None, help="dedicate's target concurrency "
                                                                "(default: --max-streams, as for the engine)")
    p.add_argument("--stabilisation-s", type=float, default=300.0)
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=64)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--interval-s", type=float, default=2.0, help="autoscaling pass")
    p.add_argument("--signal-s", type=float, default=2.0, help="gateway signal writes")
    p.add_argument("--reconcile-s", type=float, default=1.0, help="desired count to launch")
    p.add_argument("--warmup-s", type=float, default=0.0)
    p.add_argument("--slo-ms", type=float, default=1000.0, help="time to first token a request should beat")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--limit-s", type=float, default=None, help="replay only the trace's first seconds")
    p.add_argument("--events", action="store_true", help="print dedicate's scaling decisions")
    p.add_argument("--day-copies", type=int, default=24,
                   help="also replay a day: the trace this many times over, on a daily curve (0: skip)")
    p.add_argument("--day-trough", type=float, default=0.2, help="the night's share of the trace's traffic")
    p.add_argument("--real", action="store_true", help="also replay a compressed slice against a real server")
    p.add_argument("--slice-start-s", type=float, default=900.0)
    p.add_argument("--slice-s", type=float, default=600.0)
    p.add_argument("--compress", type=float, default=5.0)
    return p.parse_args(argv)


def setup_from(a: argparse.Namespace, k: float = 1.0) -> Setup:
    """The benchmark's parameters, with time compressed ``k`` times."""
    return Setup(
        model=ReplicaModel(ttft_s=a.ttft_ms / 1000 / k, tokens_per_s=a.tokens_per_s * k,
                           max_streams=a.max_streams, startup_s=a.startup_s / k),
        timing=Timing(interval_s=a.interval_s / k, signal_s=a.signal_s / k, reconcile_s=a.reconcile_s / k),
        fleet=Fleet(a.nodes, a.gpus_per_node),
        min_replicas=a.min_replicas, max_replicas=a.max_replicas,
        target=float(a.target if a.target is not None else a.max_streams),
        stabilisation_s=a.stabilisation_s / k, warmup_s=a.warmup_s / k, slo_s=a.slo_ms / 1000 / k,
        seed=a.seed)


def need_steps(requests: Sequence[Request], model: ReplicaModel) -> list[tuple[float, int]]:
    """Replicas needed so that no request ever waits (perfect routing), as (from time, count) steps."""
    steps: list[tuple[float, int]] = [(0.0, 0)]
    for t, now in in_flight_steps(requests, model):
        n = math.ceil(now / model.max_streams)
        if n == steps[-1][1]:
            continue
        if steps[-1][0] == t:
            steps[-1] = (t, n)
        else:
            steps.append((t, n))
    return steps


def bound_replica_seconds(requests: Sequence[Request], model: ReplicaModel, window_s: float = 0.0,
                          start: float = 0.0) -> float:
    """Replica-seconds of a fleet that lets no request wait and never drops below the most it
    needed in the last ``window_s``, with no start-up delay and perfect routing.

    ``window_s = 0`` is a clairvoyant fleet that has exactly what is in flight at every instant:
    no policy spends less without making some request wait. ``window_s`` = the stabilisation
    window is the least any policy can spend that obeys the same "never below the busiest moment
    of the last window" rule and lets no request wait, however well it predicts.
    """
    end = requests[-1].at if requests else 0.0
    steps = need_steps(requests, model)
    # The trailing maximum changes only where a step begins or a step's end leaves the window.
    ends = [steps[i + 1][0] if i + 1 < len(steps) else math.inf for i in range(len(steps))]
    points = sorted({t for t, _ in steps} | {e + window_s for e in ends if e != math.inf})
    total = 0.0
    live: deque[int] = deque()  # indices of steps in the window, levels strictly falling
    nxt = 0
    for k, p in enumerate(points):
        while nxt < len(steps) and steps[nxt][0] <= p:
            while live and steps[live[-1]][1] <= steps[nxt][1]:
                live.pop()
            live.append(nxt)
            nxt += 1
        while live and ends[live[0]] + window_s <= p:  # the same sum as the point's: no rounding gap
            live.popleft()
        level = steps[live[0]][1] if live else 0
        a, b = max(p, start), min(points[k + 1] if k + 1 < len(points) else end, end)
        if b > a:
            total += level * (b - a)
    return total


def print_bounds(setup: Setup, requests: Sequence[Request], figures: dict[str, Any]) -> dict[str, float]:
    """Two floors to read the saving against (both for a fleet that lets no request wait)."""
    fixed = float(figures["fixed_peak"]["replica_minutes"])
    oracle = bound_replica_seconds(requests, setup.model, 0.0, setup.warmup_s) / 60
    steady = bound_replica_seconds(requests, setup.model, setup.stabilisation_s, setup.warmup_s) / 60
    if fixed:
        print(f"  lower bound, clairvoyant: exactly what is in flight at every instant, no start-up delay: "
              f"{oracle:.1f} replica-minutes ({1 - oracle / fixed:.0%} below the fixed fleet)")
        print(f"  lower bound under the stabilisation rule: never below the busiest moment of the last "
              f"{setup.stabilisation_s:g} s, no request waiting, no start-up delay: {steady:.1f} "
              f"replica-minutes ({1 - steady / fixed:.0%} below the fixed fleet); a policy under the rule "
              f"goes below it only by letting requests wait")
    return {"clairvoyant": round(oracle, 1), "stabilised": round(steady, 1)}


def describe(a: argparse.Namespace, setup: Setup, requests: Sequence[Request], what: str) -> None:
    m = setup.model
    print(f"{what}: {len(requests)} requests over {requests[-1].at / 60:.1f} min; "
          f"peak {peak_concurrency(requests, m)} in flight if none waited")
    print(f"replica model: {m.max_streams} streams, first token {m.ttft_s * 1000:g} ms after a slot, "
          f"{m.tokens_per_s:g} tokens/s per stream, ready {m.startup_s:g} s after launch; "
          f"{a.nodes} nodes x {a.gpus_per_node} GPUs; dedicate's target {setup.target:g} per replica, "
          f"stabilisation {setup.stabilisation_s:g} s; SLO: first token within {setup.slo_s * 1000:g} ms")


def smaller_fixed_fleet(setup: Setup, requests: Sequence[Request], fixed: int) -> None:
    """The next smaller fixed fleet: what the peak fleet's last replica buys."""
    if fixed <= 1:
        return
    c = FixedController(fixed - 1)
    r = Replay(requests, setup.model, setup.timing, setup.fleet, c, min_replicas=setup.min_replicas,
               max_replicas=setup.max_replicas, seed=setup.seed, warmup_s=setup.warmup_s, slo_s=setup.slo_s).run()
    f = r.figures()
    print(f"  for comparison, a fixed fleet of {fixed - 1} (one fewer): {f['replica_minutes']} replica-minutes, "
          f"p99 {f['ttft_p99_ms']} ms, {f['slo_violations']} over the SLO")


def replay_and_report(setup: Setup, requests: Sequence[Request], title: str) -> tuple[dict[str, Any], list[Result]]:
    results = replay_all(setup, requests)
    figures: dict[str, Any] = print_table(results, title)
    bounds = print_bounds(setup, requests, figures)
    fixed = next(r for r in results if r.name == "fixed_peak").peak_replicas
    smaller_fixed_fleet(setup, requests, fixed)
    for line in verdict(figures):
        print(line)
    figures["bounds"] = bounds
    return figures, results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    requests = load_trace(a.trace)
    if a.limit_s is not None:
        requests = [r for r in requests if r.at < a.limit_s]
    setup = setup_from(a)
    describe(a, setup, requests, f"trace {a.trace.name}")
    figures, results = replay_and_report(setup, requests, "virtual replay of the whole trace:")
    if a.events:
        for r in results:
            if r.events:
                print(f"{r.name}'s decisions:")
                print("\n".join(f"  {e}" for e in r.events))
    if a.day_copies > 0:
        day = day_trace(requests, a.day_copies, a.day_trough, a.seed)
        print()
        describe(a, setup, day, f"a day: the trace {a.day_copies} times over, thinned to a daily curve "
                                f"({a.day_trough:.0%} of its traffic at night, all of it at midday)")
        figures["day"], _ = replay_and_report(setup, day, "virtual replay of the day:")
    if a.real:
        from autoscale_real import run_real  # only --real needs a server and its processes

        figures["slice"] = run_real(a, requests)
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
