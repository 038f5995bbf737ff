"""The autoscaling benchmark replays a trace deterministically and ends with its JSON figures."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "autoscale.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_autoscale", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


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
    bench = load_bench()
    trace = write_trace(tmp_path / "trace.csv")
    args = ["--trace", str(trace), "--startup-s", "10", "--events"]
    bench.main(args)
    first = capsys.readouterr().out
    bench.main(args)
    again = capsys.readouterr().out
    assert first == again, "the same input gives the same figures"
    figures = json.loads(first.strip().splitlines()[-1])
    assert set(figures) == {"dedicate", "fixed_peak", "ray_like"}
    for f in figures.values():
        assert set(f) == {"replica_minutes", "ttft_p50_ms", "ttft_p99_ms", "slo_violations"}
    assert figures["dedicate"]["replica_minutes"] < figures["fixed_peak"]["replica_minutes"], \
        "the burst's replicas are given back in the silence after it"
    assert "→" in first, "dedicate's decisions are printed with --events"


def test_the_azure_trace_loads_when_it_is_there() -> None:
    bench = load_bench()
    if not bench.DEFAULT_TRACE.exists():
        pytest.skip("the shared trace is not present")
    requests = bench.load_trace(bench.DEFAULT_TRACE)
    assert len(requests) == 19366 and requests[0].at == 0.0
    assert all(a.at <= b.at for a, b in itertools.pairwise(requests))
