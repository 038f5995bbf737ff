"""Server-rendered charts: a series in, an accessible SVG line chart out. No I/O, no clock.

The replica and cost series are read off the billing intervals (the facts the bill is made of), so
the chart of cost is the bill drawn over time; requests and TTFT come from the gateway's minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from markupsafe import Markup, escape

from dedicate.metering.ledger import Interval, usage

WIDTH, HEIGHT, PAD = 320, 96, 4


@dataclass(frozen=True)
class Series:
    title: str
    unit: str
    points: list[tuple[datetime, float]]

    @property
    def last(self) -> float | None:
        return self.points[-1][1] if self.points else None


def steps(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    out, t = [], start
    while t <= end:
        out.append(t)
        t += step
    return out


def ready_replicas(intervals: Sequence[Interval], start: datetime, end: datetime, step: timedelta) -> Series:
    """How many replicas were seen ready at each step: the intervals that cover that moment."""
    points = [(t, float(sum(1 for i in intervals if i.started_at <= t <= i.last_seen_at)))
              for t in steps(start, end, step)]
    return Series("Ready replicas", "replicas", points)


def cost(intervals: Sequence[Interval], start: datetime, end: datetime, step: timedelta) -> Series:
    """The charges since ``start``, summed to each step, in cents: the bill's own lines (``usage``)."""
    points = [(t, float(sum((line.exact_cents for line in usage(intervals, start, t)), Fraction(0))))
              for t in steps(start, end, step)]
    return Series("Cost since the start of the chart", "cents", points)


def svg(series: Series) -> Markup:
    """A line chart of ``series`` with its title and last value as text; an empty series says so."""
    title = escape(series.title)
    if len(series.points) < 2:
        return Markup('<p class="chart-empty">{}: no data yet</p>').format(title)
    lo_t, hi_t = series.points[0][0], series.points[-1][0]
    span = max((hi_t - lo_t).total_seconds(), 1.0)
    peak = max(v for _, v in series.points)
    top = peak or 1.0  # an all-zero series is a flat line at the bottom

    def xy(t: datetime, v: float) -> str:
        x = PAD + (WIDTH - 2 * PAD) * (t - lo_t).total_seconds() / span
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * v / top
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in series.points)
    last = series.last or 0.0
    summary = escape(f"{series.title}: now {last:g} {series.unit}, at most {peak:g} {series.unit}, "
                     f"from {lo_t:%H:%M} to {hi_t:%H:%M} UTC")
    return Markup(
        '<figure class="chart"><svg viewBox="0 0 {w} {h}" role="img" aria-label="{s}" preserveAspectRatio="none">'
        '<polyline fill="none" stroke="currentColor" stroke-width="2" points="{line}"/></svg>'
        '<figcaption>{t}: <strong>{last}</strong> {u} now (max {top})</figcaption></figure>'
    ).format(w=WIDTH, h=HEIGHT, s=summary, line=line, t=title, last=f"{last:g}", u=escape(series.unit),
             top=f"{peak:g}")
