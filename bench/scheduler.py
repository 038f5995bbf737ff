"""Placement benchmark: the indexed scheduler against the full scan, on one simulated fleet.

Run from the repository root::

    .venv/bin/python bench/scheduler.py [--nodes 10000] [--replicas 50000] [--naive-subset 2000] [--seed 7]

The fleet (mixed GPU types, node sizes, partly occupied) and the request
sequence (replica shapes, interleaved departures) come from one seed, so every
run sees the same work. A *decision* is one ``place`` call: a placement or a
``NoPlacement``, both count. Decisions per second is decisions divided by the
time spent inside the timed calls; latency percentiles are over those calls.

The full scan looks at every node on every decision, so it runs only on the
first ``--naive-subset`` requests; the index is timed on that same subset from
the same starting fleet, and ``speedup_vs_full_scan`` compares the two there.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile

from dedicate.scheduler.placement import FleetIndex, NodeView, NoPlacement, Placement, place
from dedicate.scheduler.queue import Demand, plan

GPU_TYPES = ("h100-80gb", "h200-140gb", "a100-80gb", "l40s-48gb", "b200-192gb")
GPU_TYPE_WEIGHTS = (40, 15, 20, 15, 10)
NODE_SIZES = (1, 2, 4, 8)
NODE_SIZE_WEIGHTS = (5, 10, 15, 70)  # mostly 8-GPU nodes
REPLICA_SHAPES = (1, 2, 4, 8)
REPLICA_SHAPE_WEIGHTS = (50, 25, 15, 10)  # weighted toward small replicas
EMPTY_NODE_SHARE = 0.3  # the other nodes have a random subset of their slots busy

TARGET_PLACEMENTS_PER_S = 5_000
TARGET_P99_MS = 2.0
PLAN_DEMANDS = 2_000


@dataclass(frozen=True)
class Op:
    """One step of the sequence: place ``count`` x ``gpu_type``, or release a live placement."""

    kind: str  # "place" or "release"
    gpu_type: str = ""
    count: int = 0
    pick: int = 0  # for "release": which live placement (modulo how many are live)


@dataclass
class RunResult:
    latencies_ns: list[int]
    placed: int
    unplaced: int
    released: int
    placements: list[Placement | NoPlacement]


# the fleet and the work ------------------------------------------------------------------------


def make_fleet(n: int, seed: int) -> list[NodeView]:
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        gpu_type = rng.choices(GPU_TYPES, GPU_TYPE_WEIGHTS)[0]
        total = rng.choices(NODE_SIZES, NODE_SIZE_WEIGHTS)[0]
        if rng.random() < EMPTY_NODE_SHARE:
            free = tuple(range(total))
        else:
            free = tuple(sorted(rng.sample(range(total), rng.randint(0, total))))
        nodes.append(NodeView(f"node-{i:05d}", gpu_type, total, free))
    return nodes


def make_ops(replicas: int, seed: int, release_every: int) -> list[Op]:
    """``replicas`` placement requests; after every ``release_every``-th, one earlier placement leaves."""
    rng = random.Random(seed + 1)
    ops = []
    for i in range(1, replicas + 1):
        gpu_type = rng.choices(GPU_TYPES, GPU_TYPE_WEIGHTS)[0]
        count = rng.choices(REPLICA_SHAPES, REPLICA_SHAPE_WEIGHTS)[0]
        ops.append(Op("place", gpu_type, count))
        if release_every and i % release_every == 0:
            ops.append(Op("release", pick=rng.randrange(1 << 30)))
    return ops


def first_requests(ops: Sequence[Op], n: int) -> list[Op]:
    """The prefix of ``ops`` holding the first ``n`` placement requests (and the releases among them)."""
    out: list[Op] = []
    seen = 0
    for op in ops:
        if op.kind == "place":
            if seen == n:
                break
            seen += 1
        out.append(op)
    return out


# the two implementations -----------------------------------------------------------------------


def run_indexed(nodes: Sequence[NodeView], ops: Sequence[Op]) -> RunResult:
    index = FleetIndex.build(nodes)
    live: list[Placement] = []
    result = RunResult([], 0, 0, 0, [])
    clock = time.perf_counter_ns
    for op in ops:
        if op.kind == "release":
            if live:
                _release_one(live, op.pick, lambda p: index.give_back(p.node, p.slots))
                result.released += 1
            continue
        t0 = clock()
        decision = index.place(op.gpu_type, op.count)
        result.latencies_ns.append(clock() - t0)
        _record(result, live, decision)
    return result


def run_full_scan(nodes: Sequence[NodeView], ops: Sequence[Op]) -> RunResult:
    """The reference scan over a list of NodeView it keeps current itself."""
    fleet = list(nodes)
    at = {n.name: i for i, n in enumerate(fleet)}
    live: list[Placement] = []
    result = RunResult([], 0, 0, 0, [])

    def take(p: Placement) -> None:
        old = fleet[at[p.node]]
        taken = set(p.slots)
        fleet[at[p.node]] = NodeView(old.name, old.gpu_type, old.total,
                                     tuple(s for s in old.free_slots if s not in taken))

    def give_back(p: Placement) -> None:
        old = fleet[at[p.node]]
        fleet[at[p.node]] = NodeView(old.name, old.gpu_type, old.total,
                                     tuple(sorted(set(old.free_slots) | set(p.slots))))

    clock = time.perf_counter_ns
    for op in ops:
        if op.kind == "release":
            if live:
                _release_one(live, op.pick, give_back)
                result.released += 1
            continue
        t0 = clock()
        decision = place(fleet, op.gpu_type, op.count)
        result.latencies_ns.append(clock() - t0)
        if isinstance(decision, Placement):
            take(decision)
        _record(result, live, decision)
    return result


def _record(result: RunResult, live: list[Placement], decision: Placement | NoPlacement) -> None:
    result.placements.append(decision)
    if isinstance(decision, Placement):
        result.placed += 1
        live.append(decision)
    else:
        result.unplaced += 1


def _release_one(live: list[Placement], pick: int, give_back: Callable[[Placement], None]) -> None:
    """Release one live placement (swap-remove keeps this O(1))."""
    i = pick % len(live)
    live[i], live[-1] = live[-1], live[i]
    give_back(live.pop())


# the queue policy ------------------------------------------------------------------------------


def make_demands(n: int, seed: int) -> list[Demand]:
    """``n`` endpoints over the pools: most want a small minimum now, some want surplus too."""
    rng = random.Random(seed + 2)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    demands = []
    for i in range(n):
        gpus = rng.choices(REPLICA_SHAPES, REPLICA_SHAPE_WEIGHTS)[0]
        min_r = rng.randint(1, 2)
        desired = min_r + rng.choice((0, 0, 1, 2))
        queued = rng.random() < 0.9  # the rest lost a replica within their minimum (replacements)
        demands.append(Demand(
            endpoint_id=f"ep-{i:05d}", owner=f"owner-{i % 50}", pool=rng.choices(GPU_TYPES, GPU_TYPE_WEIGHTS)[0],
            gpus=gpus, min_replicas=min_r, desired=desired, active=0 if queued else min_r - 1,
            min_queued_at=t0 + timedelta(seconds=i) if queued else None, created_at=t0 + timedelta(seconds=i),
        ))
    return demands


def time_plan(nodes: Sequence[NodeView], demands: Sequence[Demand]) -> tuple[float, int, int]:
    index = FleetIndex.build(nodes)
    t0 = time.perf_counter_ns()
    p = plan(index, demands)
    ms = (time.perf_counter_ns() - t0) / 1e6
    return ms, sum(len(v) for v in p.placements.values()), sum(p.queued.values())


# figures ---------------------------------------------------------------------------------------


def percentile_ms(latencies_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    return percentile(sorted(latencies_ns), q) / 1e6 if latencies_ns else 0.0


def rate(latencies_ns: Sequence[int]) -> float:
    total = sum(latencies_ns)
    return len(latencies_ns) / (total / 1e9) if total else 0.0


def describe(label: str, r: RunResult) -> str:
    return (f"{label}: {len(r.latencies_ns):,} decisions ({r.placed:,} placed, {r.unplaced:,} unplaced, "
            f"{r.released:,} released), {rate(r.latencies_ns):,.0f} decisions/s, "
            f"p50 {percentile_ms(r.latencies_ns, 50):.4f} ms, p99 {percentile_ms(r.latencies_ns, 99):.4f} ms, "
            f"max {percentile_ms(r.latencies_ns, 100):.4f} ms")


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=50_000, help="placement requests (decisions)")
    parser.add_argument("--naive-subset", type=int, default=2_000,
                        help="first N requests also run through the full scan")
    parser.add_argument("--release-every", type=int, default=5,
                        help="after every K-th request one earlier placement leaves (0: never)")
    parser.add_argument("--plan-demands", type=int, default=PLAN_DEMANDS)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    nodes = make_fleet(args.nodes, args.seed)
    ops = make_ops(args.replicas, args.seed, args.release_every)
    slots = sum(n.total for n in nodes)
    free = sum(len(n.free_slots) for n in nodes)
    print(f"fleet: {len(nodes):,} nodes, {slots:,} GPUs ({free:,} free at start) over {len(GPU_TYPES)} GPU types;"
          f" seed {args.seed}")
    print(f"work: {args.replicas:,} placement requests, {len(ops) - args.replicas:,} departures interleaved")

    t0 = time.perf_counter()
    t_build = time.perf_counter_ns()
    FleetIndex.build(nodes)
    index_build_ms = (time.perf_counter_ns() - t_build) / 1e6
    print(f"FleetIndex.build: {index_build_ms:.1f} ms")

    full = run_indexed(nodes, ops)
    print(describe("indexed, all requests", full))

    subset_n = min(args.naive_subset, args.replicas)
    subset = first_requests(ops, subset_n)
    idx_sub = run_indexed(nodes, subset)
    naive = run_full_scan(nodes, subset)
    print(describe(f"indexed, first {subset_n:,}", idx_sub))
    print(describe(f"full scan, first {subset_n:,}", naive))

    if idx_sub.placed != naive.placed or idx_sub.unplaced != naive.unplaced:
        raise SystemExit(f"the two implementations disagree on the first {subset_n} requests: "
                         f"indexed placed {idx_sub.placed}, full scan placed {naive.placed}")
    differing = sum(1 for a, b in zip(idx_sub.placements, naive.placements, strict=True)
                    if isinstance(a, Placement) and a != b)
    if differing:
        print(f"warning: {differing:,} of {idx_sub.placed:,} placements went to a different node or slots "
              "(both best fit; ties are broken differently)")
    else:
        print(f"both implementations made the same {len(naive.placements):,} decisions")
    speedup = rate(idx_sub.latencies_ns) / rate(naive.latencies_ns) if rate(naive.latencies_ns) else 0.0
    print(f"speedup vs full scan (first {subset_n:,} requests): {speedup:,.1f}x")

    demands = make_demands(args.plan_demands, args.seed)
    plan_ms, plan_placed, plan_queued = time_plan(nodes, demands)
    print(f"queue plan(): {len(demands):,} demands in {plan_ms:,.1f} ms "
          f"({plan_placed:,} replicas placed, {plan_queued:,} queued)")

    per_s = rate(full.latencies_ns)
    p99 = percentile_ms(full.latencies_ns, 99)
    ok_rate = per_s >= TARGET_PLACEMENTS_PER_S
    ok_p99 = p99 < TARGET_P99_MS
    print(f"target >= {TARGET_PLACEMENTS_PER_S:,} placements/s: {'PASS' if ok_rate else 'FAIL'} ({per_s:,.0f}); "
          f"p99 < {TARGET_P99_MS} ms: {'PASS' if ok_p99 else 'FAIL'} ({p99:.4f} ms)")
    print(f"wall time {time.perf_counter() - t0:.1f} s")

    figures: dict[str, object] = {
        "placements_per_s": round(per_s, 1),
        "decision_p50_ms": round(percentile_ms(full.latencies_ns, 50), 5),
        "decision_p99_ms": round(p99, 5),
        "decision_max_ms": round(percentile_ms(full.latencies_ns, 100), 5),
        "full_scan_placements_per_s": round(rate(naive.latencies_ns), 1),
        "full_scan_decision_p99_ms": round(percentile_ms(naive.latencies_ns, 99), 5),
        "indexed_subset_placements_per_s": round(rate(idx_sub.latencies_ns), 1),
        "speedup_vs_full_scan": round(speedup, 1),
        "plan_ms_2000_demands": round(plan_ms, 1),  # with --plan-demands other than 2000: that many
        "plan_demands": len(demands),
        "nodes": args.nodes,
        "replicas": args.replicas,
        "placed": full.placed,
        "unplaced": full.unplaced,
        "released": full.released,
        "subset_requests": subset_n,
        "indexed_subset_placed": idx_sub.placed,
        "full_scan_subset_placed": naive.placed,
        "targets_met": ok_rate and ok_p99,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
