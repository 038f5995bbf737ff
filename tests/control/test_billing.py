"""Billing exactness under faults, on SQLite and PostgreSQL, with the injected clock.

A replica costs money only between its first good probe and its last good probe: never
while launching or queued, never if it never became ready, never while nobody watched.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError

from dedicate.control.inputs import BudgetUpdate, EndpointPatch
from dedicate.domain.records import Address
from dedicate.metering.ledger import Interval, billed, invoice, invoice_bytes, lines, month_bounds, usage
from dedicate.metering.rating import charge_exact
from dedicate.store.tables import IntervalRow
from tests.control.test_capacity import ADMIN, ALICE, BOB, Fleet, h100_node

PRICE = Decimal("5.6")  # 1x H100 in the test catalog, cents per replica-minute


class Billed(Fleet):
    """A fleet whose replicas answer their probe only when told."""

    def __init__(self, tmp_path: Path, db_url: str, healthy: bool = True) -> None:
        self.healthy = healthy
        super().__init__(tmp_path, [h100_node()], db_url=db_url)

    def reconciler(self):  # type: ignore[no-untyped-def]
        from dedicate.control.reconciler import Reconciler

        async def probe(address: Address) -> bool:
            return self.healthy

        return Reconciler(self.store, self.runtime, self.settings, self.clock, probe=probe)

    def run(self, seconds: int, step: float = 1.0) -> None:
        async def go() -> None:
            for _ in range(int(seconds / step)):
                self.clock.advance(step)
                await self.rec.pass_once()
                await self.rec.settle()

        asyncio.run(go())

    def exact(self, endpoint_id: str) -> Fraction:
        far = datetime(2100, 1, 1, tzinfo=UTC)
        lines = usage(self.store.intervals(endpoint_id=endpoint_id), datetime(2000, 1, 1, tzinfo=UTC), far)
        return sum((line.exact_cents for line in lines), Fraction(0))


def test_a_replica_that_never_became_ready_costs_nothing(tmp_path: Path, db_url: str) -> None:
    f = Billed(tmp_path, db_url, healthy=False)
    e = f.create(ALICE, 1, 1)
    f.run(20)
    assert f.ep(e)["state"] == "STARTING"
    f.svc.update(ALICE, e, EndpointPatch(state="STOPPED"))
    f.run(3)
    assert f.ep(e)["state"] == "STOPPED"
    assert f.exact(e) == 0 and f.store.intervals(endpoint_id=e) == []


def test_waiting_in_the_queue_costs_nothing(tmp_path: Path, db_url: str) -> None:
    f = Billed(tmp_path, db_url)
    f.create(ALICE, 8, 1)
    f.clock.advance(1)  # first come, first served: this one comes second
    queued = f.create(BOB, 8, 1)
    f.run(30)
    assert f.ep(queued)["state"] == "PENDING"
    assert f.exact(queued) == 0


def test_ninety_seconds_ready_cost_exactly_one_and_a_half_minutes(tmp_path: Path, db_url: str) -> None:
    f = Billed(tmp_path, db_url, healthy=False)
    e = f.create(ALICE, 1, 1)
    f.run(5)  # launching: not billed
    f.healthy = True
    f.run(1)  # the first good probe opens the interval
    f.run(90)  # ninety more seconds of good probes
    f.healthy = False  # the replica stops answering: billing ends at its last good probe
    f.run(10)
    assert f.exact(e) == Fraction(PRICE) * Fraction(3, 2)
    view = f.svc.get(ALICE, e)
    assert view.cost is not None and str(view.cost.cost_this_month_cents) == "8"


def test_a_control_plane_outage_is_not_billed_and_nothing_overlaps(tmp_path: Path, db_url: str) -> None:
    f = Billed(tmp_path, db_url)
    e = f.create(ALICE, 1, 1)
    f.run(31)  # first probe at +2 s (placed at +1), then 29 more good probes
    before = f.exact(e)
    # The server dies; its replicas keep running; a new server takes over after 60 s.
    f.clock.advance(60)
    f.rec = f.reconciler()
    f.rec.holder = "restarted:1"
    f.run(20)
    intervals = sorted(f.store.intervals(endpoint_id=e), key=lambda i: i.started_at)
    assert len(intervals) == 2
    first, second = intervals
    assert first.last_seen_at < second.started_at, "no overlap"
    assert (second.started_at - first.last_seen_at) >= timedelta(seconds=60), "the outage is not billed"
    assert f.exact(e) == before + charge_exact(PRICE, (second.last_seen_at - second.started_at).seconds)
    assert f.store.open_interval_count() == 1


def test_recomputing_an_invoice_gives_identical_bytes(tmp_path: Path, db_url: str) -> None:
    f = Billed(tmp_path, db_url)
    e = f.create(ALICE, 2, 1)
    f.run(45, step=1.5)
    f.rec = f.reconciler()
    f.rec.holder = "restarted:1"
    f.clock.advance(120)
    f.run(10)
    month = f"{f.clock.now():%Y-%m}"
    first = f.svc.billing.invoice(ALICE, month)
    again = f.svc.billing.invoice(ALICE, month)
    assert first == again
    assert b'"total_cents"' in first and e.encode() in first


def test_the_same_facts_give_the_same_invoice_bytes_on_sqlite_and_postgres(tmp_path: Path, pg_server: str) -> None:
    from tests.conftest import _new_pg_database

    results = []
    for i, url in enumerate([f"sqlite:///{tmp_path / 'a.db'}", _new_pg_database(pg_server)]):
        f = Billed(tmp_path / str(i), url)
        f.create(ALICE, 1, 1)
        f.run(37, step=0.7)
        results.append(f.svc.billing.invoice(ALICE, f"{f.clock.now():%Y-%m}"))
    # Endpoint ids are random per run; compare everything else.
    import json

    a, b = (json.loads(r) for r in results)
    for inv in (a, b):
        for line in inv["lines"]:
            line.pop("endpoint"), line.pop("endpoint_name")
    assert a == b and a["lines"], "same replica-seconds and cents on both backends"


def test_the_database_allows_one_open_interval_per_replica(tmp_path: Path, db_url: str) -> None:
    f = Billed(tmp_path, db_url)
    f.create(ALICE, 1, 1)
    f.run(3)
    (r,) = f.store.live_replicas()
    t = f.clock.now()
    with pytest.raises(IntegrityError), f.store.tx() as s:
        s.add(IntervalRow(replica_id=r.id, endpoint_id=r.endpoint_id, owner="alice", hardware="x",
                          cents_per_minute=PRICE, started_at=t, last_seen_at=t, closed=False))


def test_budget_alerts_fire_once_and_an_opted_in_owner_is_stopped(tmp_path: Path, db_url: str) -> None:
    f = Billed(tmp_path, db_url)
    f.svc.billing.set_budget(ALICE, BudgetUpdate(monthly_cents=10, stop_at_limit=True))
    e = f.create(ALICE, 1, 1)
    f.run(150)  # 5.6 cents a minute: 80% (8 cents) after ~86 s, 100% after ~107 s
    budget = f.svc.billing.budget(ALICE)
    assert [a.threshold for a in budget.alerts] == [80, 100]
    assert f.ep(e)["state"] == "STOPPED"
    assert any(ev.kind == "stopped" and "budget" in ev.message for ev in f.store.events(e))
    spent = budget.month_to_date_cents
    assert Decimal(10) <= spent <= Decimal(12), "stopped within a check interval of the limit"


def test_other_owners_bills_are_private(tmp_path: Path) -> None:
    from dedicate.domain.errors import Forbidden

    f = Billed(tmp_path, f"sqlite:///{tmp_path / 'p.db'}")
    with pytest.raises(Forbidden):
        f.svc.billing.usage(ALICE, None, None, owner="bob")
    assert f.svc.billing.usage(ADMIN, None, None, owner="bob").owner == "bob"


# the ledger, pure ------------------------------------------------------------------------

T0 = datetime(2026, 1, 31, 23, 59, 0, tzinfo=UTC)


def test_an_interval_across_a_month_boundary_is_split_exactly_there() -> None:
    iv = Interval("r", "e", "o", "1x", PRICE, T0, T0 + timedelta(minutes=2))
    jan = invoice("o", "2026-01", [iv], {})
    feb = invoice("o", "2026-02", [iv], {})
    assert jan["lines"][0]["replica_seconds"] == "60.000000"  # type: ignore[index]
    assert feb["lines"][0]["replica_seconds"] == "60.000000"  # type: ignore[index]
    assert month_bounds("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=86_399_999), max_size=8),
       price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("999"), places=4))
def test_billing_a_period_equals_the_sum_of_billing_any_split_of_it(cuts: list[int], price: Decimal) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    iv = Interval("r", "e", "o", "h", price, start + timedelta(seconds=7), start + timedelta(days=1))
    whole = usage([iv], start, start + timedelta(days=1))[0].exact_cents
    points = [start, *sorted({start + timedelta(milliseconds=c) for c in cuts}), start + timedelta(days=1)]
    parts = Fraction(0)
    for lo, hi in itertools.pairwise(points):
        parts += sum((line.exact_cents for line in usage([iv], lo, hi)), Fraction(0))
    assert parts == whole
    seconds = usage([iv], start, start + timedelta(days=1))[0].replica_seconds
    assert whole == seconds * Fraction(price) / 60, "charges = replica-seconds × price per second"


@settings(max_examples=200, deadline=None)
@given(spans=st.lists(st.tuples(st.sampled_from(["e1", "e2"]), st.sampled_from(["h1", "h2"]),
                                st.sampled_from([Decimal("5.6"), Decimal("0.123456"), Decimal("999")]),
                                st.integers(min_value=-10**10, max_value=10**11),
                                st.integers(min_value=0, max_value=10**10)), max_size=12))
def test_summing_time_per_price_first_charges_exactly_what_each_interval_charges(
        spans: list[tuple[str, str, Decimal, int, int]]) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    end = start + timedelta(days=1)
    ivs = [Interval(f"r{n}", e, "o", h, price, start + timedelta(microseconds=at),
                    start + timedelta(microseconds=at + length)) for n, (e, h, price, at, length) in enumerate(spans)]
    expected: dict[tuple[str, str], tuple[Fraction, Fraction]] = {}
    for iv in ivs:  # each interval charged on its own, as a bill line is defined
        s = iv.seconds_within(start, end)
        if s:
            sec, cents = expected.get((iv.endpoint_id, iv.hardware), (Fraction(0), Fraction(0)))
            expected[(iv.endpoint_id, iv.hardware)] = (sec + s, cents + charge_exact(iv.cents_per_minute, s))
    got = {(line.endpoint_id, line.hardware): (line.replica_seconds, line.exact_cents)
           for line in lines(billed(ivs, start, end))}
    assert got == expected


def test_invoice_bytes_are_canonical() -> None:
    iv = Interval("r", "e", "o", "h", PRICE, T0, T0 + timedelta(seconds=90))
    assert invoice_bytes(invoice("o", "2026-01", [iv], {"e": "o/x"})) == \
        invoice_bytes(invoice("o", "2026-01", [iv], {"e": "o/x"}))


def test_time_between_a_failed_probe_and_the_next_good_one_is_not_billed(tmp_path: Path, db_url: str) -> None:
    f = Billed(tmp_path, db_url)
    e = f.create(ALICE, 1, 1)
    f.run(11)  # placed at +1, good probes from +2 to +11: 9 s
    f.healthy = False
    f.run(1)  # one failed probe (below the replacement threshold)
    f.healthy = True
    f.run(10)  # good probes from +13 to +22: 9 s
    spans = sorted((iv.started_at, iv.last_seen_at) for iv in f.store.intervals(endpoint_id=e))
    assert [(b - a).total_seconds() for a, b in spans] == [9.0, 9.0]
    assert f.exact(e) == charge_exact(PRICE, 18)
