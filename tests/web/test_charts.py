"""Charts drawn from the billing intervals: the replicas seen ready, and the cost as the bill counts it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from dedicate.metering.ledger import Interval
from dedicate.web.charts import Series, cost, ready_replicas, svg

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def iv(start_min: int, end_min: int, rid: str = "r1") -> Interval:
    return Interval(rid, "endpoint-1", "ada", "1x_cpu", Decimal("0.5"), T0 + start_min * MIN, T0 + end_min * MIN)


def test_ready_replicas_count_the_intervals_covering_each_moment() -> None:
    s = ready_replicas([iv(0, 10), iv(5, 20, "r2")], T0, T0 + 20 * MIN, 5 * MIN)
    assert [v for _, v in s.points] == [1, 2, 2, 1, 1]


def test_the_cost_series_sums_the_billed_minutes_to_each_step() -> None:
    s = cost([iv(0, 10), iv(5, 20, "r2")], T0, T0 + 20 * MIN, 10 * MIN)
    # 10 min and 5 min by minute 10, at 0.5 cents a minute; then 10 + 15 minutes
    assert [v for _, v in s.points] == [0.0, 7.5, 12.5]


def test_a_chart_is_labelled_for_screen_readers_and_escapes_its_title() -> None:
    html = str(svg(Series("<b>x</b>", "ms", [(T0, 1.0), (T0 + MIN, 3.0)])))
    assert 'role="img"' in html and "aria-label=" in html and "now 3 ms" in html
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_an_all_zero_series_draws_a_flat_line_and_says_zero() -> None:
    html = str(svg(Series("Ready replicas", "replicas", [(T0, 0.0), (T0 + MIN, 0.0)])))
    assert "(max 0)" in html and "1e-09" not in html


def test_a_series_of_one_point_says_there_is_no_data_yet() -> None:
    assert "no data yet" in str(svg(Series("Requests", "requests", [(T0, 4.0)])))
