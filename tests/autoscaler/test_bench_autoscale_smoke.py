"""The autoscaling benchmark replays a trace deterministically and ends with its JSON figures."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from tests.bench_files import load_bench


def write_trace(path: Path) -> Path:
    """Ten minutes: a quiet start, a burst that needs several replicas, then silence."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(600):
        second = i if i < 120 else 120 + (i - 120) / 8  # 1 a second, then 8 a second for a minute
        if second >= 180:
            break
        lines.append(f"2023-11-16 18:{15 + int(second // 60):02d}:{second % 60:09.6f}0,500,100")
    lines.append("2023-11-16 18:25:00.0000000,500,10")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_replay_prints_the_figures_of_each_policy_and_repeats_exactly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("autoscale")
    trace = write_trace(tmp_path / "trace.csv")
    args = ["--trace", str(trace), "--startup-s", "10", "--events"]
    bench.main(args)
    first = capsys.readouterr().out
    bench.main(args)
    again = capsys.readouterr().out
    assert first == again, "the same input gives the same figures"
    figures = json.loads(first.strip().splitlines()[-1])
    assert set(figures) == {"dedicate", "fixed_peak", "ray_like", "bounds", "day"}
    for scenario in (figures, figures["day"]):
        for name in ("dedicate", "fixed_peak", "ray_like"):
            assert set(scenario[name]) == {"replica_minutes", "ttft_p50_ms", "ttft_p99_ms", "slo_violations"}
        bounds = scenario["bounds"]
        assert bounds["clairvoyant"] <= bounds["stabilised"] <= scenario["fixed_peak"]["replica_minutes"]
    assert figures["dedicate"]["replica_minutes"] < figures["fixed_peak"]["replica_minutes"], \
        "the burst's replicas are given back in the silence after it"
    assert "→" in first, "dedicate's decisions are printed with --events"


def test_the_azure_trace_loads_when_it_is_there() -> None:
    bench = load_bench("autoscale")
    if not bench.DEFAULT_TRACE.exists():
        pytest.skip("the shared trace is not present")
    requests = bench.load_trace(bench.DEFAULT_TRACE)
    assert len(requests) == 19366 and requests[0].at == 0.0
    assert all(a.at <= b.at for a, b in itertools.pairwise(requests))


def test_the_bounds_hold_exactly_what_is_in_flight_or_the_busiest_moment_of_the_window() -> None:
    bench = load_bench("autoscale")
    one_stream = bench.ReplicaModel(ttft_s=0.0, tokens_per_s=1.0, max_streams=1)
    # In flight: 1 on [0, 5), 2 on [5, 10), 1 on [10, 15), none until the last request at 100.
    requests = [bench.Request(0.0, 1, 10), bench.Request(5.0, 1, 10), bench.Request(100.0, 1, 1)]
    assert bench.bound_replica_seconds(requests, one_stream) == 5 + 2 * 5 + 5
    # Held for 30 s after each moment: 1 on [0, 5), 2 on [5, 40), 1 on [40, 45).
    assert bench.bound_replica_seconds(requests, one_stream, window_s=30.0) == 5 + 2 * 35 + 5
    assert bench.bound_replica_seconds(requests, one_stream, window_s=30.0, start=20.0) == 2 * 20 + 5


def test_a_day_repeats_the_trace_thinner_at_night_and_the_same_each_time() -> None:
    bench = load_bench("autoscale")
    hour = [bench.Request(i * 0.5, 100, 10) for i in range(7200)]  # one every half second for an hour
    day = bench.day_trace(hour, copies=24, trough=0.2, seed=3)
    assert day == bench.day_trace(hour, copies=24, trough=0.2, seed=3)
    span = hour[-1].at
    night = sum(1 for r in day if r.at < span)
    midday = sum(1 for r in day if 11 * span <= r.at < 12 * span)
    assert 0.15 * len(hour) < night < 0.3 * len(hour) and midday > 0.95 * len(hour)
    assert all(a.at <= b.at for a, b in itertools.pairwise(day))


def test_the_bounds_agree_with_a_brute_force_sum_on_random_fractional_traces() -> None:
    bench = load_bench("autoscale")
    rng = random.Random(11)
    for _ in range(200):
        model = bench.ReplicaModel(ttft_s=0.1, tokens_per_s=25.0, max_streams=rng.choice((1, 2, 4)))
        requests = sorted((bench.Request(round(rng.uniform(0, 100), 3), 1, rng.randint(1, 200))
                           for _ in range(rng.randint(1, 8))), key=lambda r: r.at)
        window, start = rng.choice((0.0, 17.0, 30.3)), rng.choice((0.0, 50.0))
        steps = bench.need_steps(requests, model)
        ends = [steps[i + 1][0] if i + 1 < len(steps) else math.inf for i in range(len(steps))]
        end = requests[-1].at
        cuts = sorted({start, end, *(t for t, _ in steps), *(e + window for e in ends if e != math.inf)})
        cuts = [c for c in cuts if start <= c <= end]
        brute = 0.0
        for a, b in itertools.pairwise(cuts):
            mid = (a + b) / 2  # the level is constant between two cuts: the most needed over [mid - window, mid]
            brute += (b - a) * max((n for (t, n), e in zip(steps, ends, strict=True)
                                    if t <= mid < e + window), default=0)
        got = bench.bound_replica_seconds(requests, model, window_s=window, start=start)
        assert math.isclose(got, brute, rel_tol=1e-9, abs_tol=1e-6), (requests, model, window, start)
