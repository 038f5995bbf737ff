"""Latency histograms: percentiles exact to their bucket, and minutes that merge by adding."""

from __future__ import annotations

from dedicate.domain import latency


def test_a_percentile_falls_inside_the_bucket_that_holds_it() -> None:
    h = latency.empty()
    for ms in [12.0] * 50 + [250.0] * 40 + [4000.0] * 10:
        latency.add(h, ms)
    p50, p90, p99 = (latency.percentile(h, q) for q in (50, 90, 99))
    assert p50 is not None and 10 <= p50 <= 20
    assert p90 is not None and 200 <= p90 <= 300
    assert p99 is not None and 3000 <= p99 <= 5000
    assert latency.percentile(latency.empty(), 50) is None


def test_histograms_merge_by_adding_their_counts() -> None:
    a, b = latency.empty(), latency.empty()
    latency.add(a, 3)
    latency.add(b, 3)
    latency.add(b, 400000)  # slower than the last bound: the overflow bucket
    m = latency.merged([a, b])
    assert sum(m) == 3 and m[0] == 2 and m[-1] == 1
