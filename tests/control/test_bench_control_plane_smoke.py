"""The control-plane benchmark runs end to end at its smallest size and ends with its JSON figures.

No timing is checked: only that every phase ran and the figures are where the JSON line says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_files import load_bench


def test_a_small_installation_is_built_measured_and_reported_on_one_json_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("control_plane")
    bench.main(["--sizes", "4", "--no-baseline", "--passes", "2", "--churn-rounds", "1", "--requests", "16",
                "--creates", "2", "--timeout-s", "120", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert {"current", "growth", "targets"} <= figures.keys()
    assert "baseline" not in figures, "--no-baseline measures the current tree only"
    small = figures["current"]["sizes"]["4"]
    assert small["notes"] == [], small["notes"]
    assert (small["endpoints"], small["stopped_endpoints"], small["replicas"]) == (4, 4, 40)
    assert small["dedicate"].startswith(str(bench.ROOT / "src")), "the driver imports the tree under test"
    for key in ("idle_pass", "churn_pass", "recovery_pass", "list", "get", "create"):
        assert small[f"{key}_p50_ms"] is not None and small[f"{key}_p99_ms"] >= small[f"{key}_p50_ms"], key
    assert (small["idle_pass_n"], small["churn_pass_n"], small["list_n"], small["get_n"], small["create_n"]) == \
        (2, 1, 16, 16, 2)
    assert small["recovery_passes"] >= 1, "the dead replicas were replaced"
    assert small["list_page_size"] > 0 and small["rss_mb"] > 0
    assert set(figures["targets"]) >= {"idle_pass_p99_ms", "churn_pass_p99_ms", "list_p99_ms", "get_p99_ms",
                                       "rss_mb", "met"}
    assert "idle pass p99 ms" in out, "the human table comes before the JSON line"
