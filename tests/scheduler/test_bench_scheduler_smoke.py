"""The placement benchmark runs end to end on a tiny fleet and ends with its JSON figures (no timings checked)."""

from __future__ import annotations

import json

import pytest

from tests.bench_files import load_bench


def test_benchmark_on_a_tiny_fleet_prints_its_figures_and_both_implementations_place_the_same(
        capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("scheduler")
    bench.main(["--nodes", "50", "--replicas", "200", "--naive-subset", "200", "--plan-demands", "100",
                "--seed", "3"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert {"placements_per_s", "decision_p50_ms", "decision_p99_ms", "full_scan_placements_per_s",
            "speedup_vs_full_scan", "plan_ms_2000_demands", "nodes", "replicas"} <= figures.keys()
    assert figures["nodes"] == 50 and figures["replicas"] == 200
    assert figures["subset_requests"] == 200
    assert figures["indexed_subset_placed"] == figures["full_scan_subset_placed"] > 0
    assert figures["placed"] + figures["unplaced"] == 200
