"""The console benchmark runs end to end on a tiny installation and ends with its JSON figures.

No timing is checked: only that every page and baseline was measured and reported.
"""

from __future__ import annotations

import json

import pytest

from tests.bench_files import load_bench


def test_a_small_installation_is_rendered_measured_and_reported_on_one_json_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    load_bench("console").main(["--endpoints", "10", "--requests", "2", "--pass-s", "600"])
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert (figures["endpoints"], figures["requests"], figures["home_rows"]) == (10, 2, 10)
    for key in ("home", "rows", "billing", "detail", "admin", "api_list", "api_v2_list", "healthz"):
        assert 0 < figures[f"{key}_p50_ms"] <= figures[f"{key}_p99_ms"], key
    assert figures["api_v2_list_vs_v2_list"] == 1.0 and isinstance(figures["meets_target"], bool)
    assert "/ (Endpoints)" in out, "the human table comes before the JSON line"
