"""The ledger: billed intervals in, usage and invoices out. Pure and exact.

An interval is a span during which one replica was seen ready: from a
successful readiness probe to the last successful probe (see
docs/billing.md). Its price was copied onto it when it opened. Charges are
exact ``Fraction``s of a cent until a line is rounded, once, half-even.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from dedicate.metering.rating import charge_exact, round_cents


@dataclass(frozen=True)
class Interval:
    replica_id: str
    endpoint_id: str
    owner: str
    hardware: str
    cents_per_minute: Decimal
    started_at: datetime
    last_seen_at: datetime

    def seconds_within(self, start: datetime, end: datetime) -> Fraction:
        """Billed seconds of this interval inside [start, end), exact to the microsecond."""
        lo, hi = max(self.started_at, start), min(self.last_seen_at, end)
        if hi <= lo:
            return Fraction(0)
        delta = hi - lo
        return Fraction(delta.days * 86400 + delta.seconds) + Fraction(delta.microseconds, 10**6)


@dataclass(frozen=True)
class UsageLine:
    endpoint_id: str
    hardware: str
    replica_seconds: Fraction
    exact_cents: Fraction

    @property
    def cents(self) -> Decimal:
        return round_cents(self.exact_cents)

    @property
    def replica_minutes(self) -> Fraction:
        return self.replica_seconds / 60


@dataclass(frozen=True)
class Billed:
    """The billed time of an endpoint's intervals at one hardware and one price, inside a period.

    A charge is linear in time at one price, so these sums carry everything a usage line needs;
    the store adds them up in SQL (``LedgerStore.billed``), without reading the intervals.
    """

    endpoint_id: str
    hardware: str
    cents_per_minute: Decimal
    microseconds: int

    @property
    def seconds(self) -> Fraction:
        return Fraction(self.microseconds, 10**6)


def billed(intervals: Iterable[Interval], start: datetime, end: datetime) -> list[Billed]:
    """The intervals' billed time inside [start, end), summed per endpoint, hardware and price."""
    micros: dict[tuple[str, str, Decimal], int] = {}
    for iv in intervals:
        s = iv.seconds_within(start, end)
        if s == 0:
            continue
        key = (iv.endpoint_id, iv.hardware, iv.cents_per_minute)
        micros[key] = micros.get(key, 0) + int(s * 10**6)  # whole microseconds: the intervals' resolution
    return [Billed(e, h, c, m) for (e, h, c), m in micros.items()]


def lines(sums: Iterable[Billed]) -> list[UsageLine]:
    """One line per endpoint and hardware, each price's time charged at that price."""
    seconds: dict[tuple[str, str], Fraction] = {}
    cents: dict[tuple[str, str], Fraction] = {}
    for b in sums:
        if b.microseconds == 0:
            continue
        key = (b.endpoint_id, b.hardware)
        seconds[key] = seconds.get(key, Fraction(0)) + b.seconds
        cents[key] = cents.get(key, Fraction(0)) + charge_exact(b.cents_per_minute, b.seconds)
    return [UsageLine(e, h, seconds[(e, h)], cents[(e, h)]) for e, h in sorted(seconds)]


def usage(intervals: Iterable[Interval], start: datetime, end: datetime) -> list[UsageLine]:
    """One line per endpoint and hardware, for the period [start, end)."""
    return lines(billed(intervals, start, end))


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """'2026-11' → [2026-11-01T00:00Z, 2026-12-01T00:00Z)."""
    year, mon = (int(x) for x in month.split("-"))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


def month_of(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def fmt_fraction(x: Fraction, places: int = 6) -> str:
    """A fixed-point rendering for display (the exact value is never rounded before a line)."""
    q = Decimal(x.numerator) / Decimal(x.denominator)
    return str(q.quantize(Decimal(1).scaleb(-places)))


def invoice(owner: str, month: str, intervals: Sequence[Interval], names: dict[str, str]) -> dict[str, object]:
    """One owner's invoice for one calendar month (UTC), as a plain, deterministic object."""
    start, end = month_bounds(month)
    return invoice_of(owner, month, usage((iv for iv in intervals if iv.owner == owner), start, end), names)


def invoice_of(owner: str, month: str, month_lines: Sequence[UsageLine], names: dict[str, str]) -> dict[str, object]:
    """The invoice of one owner's usage lines of one month."""
    start, end = month_bounds(month)
    out_lines = [{
        "endpoint": line.endpoint_id,
        "endpoint_name": names.get(line.endpoint_id, line.endpoint_id),
        "hardware": line.hardware,
        "replica_seconds": fmt_fraction(line.replica_seconds),
        "replica_minutes": fmt_fraction(line.replica_minutes),
        "cents": str(line.cents),
    } for line in month_lines]
    total = sum((line.cents for line in month_lines), Decimal(0))
    return {"object": "invoice", "owner": owner, "month": month, "period_start": start.isoformat(),
            "period_end": end.isoformat(), "lines": out_lines, "total_cents": str(total)}


def invoice_bytes(inv: dict[str, object]) -> bytes:
    """The canonical bytes of an invoice: recomputing it gives the same bytes."""
    return json.dumps(inv, sort_keys=True, separators=(",", ":")).encode()

