"""Billing use cases: usage, invoices, an endpoint's cost, budgets and their alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from dedicate.clock import Clock
from dedicate.control.auth import Principal
from dedicate.control.inputs import BudgetUpdate
from dedicate.control.views import Budget, BudgetAlert, EndpointCost, Usage, UsageLine
from dedicate.domain.endpoints import EndpointState, Intent, validate_owner
from dedicate.domain.errors import Forbidden, InvalidRequest
from dedicate.domain.records import Endpoint
from dedicate.metering.ledger import Billed, invoice_bytes, invoice_of, lines, month_bounds, month_of
from dedicate.metering.rating import round_cents
from dedicate.store.repos import Store

ALERT_THRESHOLDS = (80, 100)


def parse_time(value: str | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an ISO-8601 time such as 2026-11-01T00:00:00Z", param=name) from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_month(value: str) -> str:
    try:
        year, mon = (int(x) for x in value.split("-"))
        if not (1 <= mon <= 12 and 1970 <= year <= 9999):
            raise ValueError(value)
    except ValueError as exc:
        raise InvalidRequest(f"month must look like 2026-11, got {value!r}", param="month") from exc
    return f"{year:04d}-{mon:02d}"


class Billing:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def _owner(self, principal: Principal, owner: str | None) -> str:
        if owner is not None:
            validate_owner(owner)  # a bill (or a budget) is never made for a name no key could carry
        if owner is None or owner == principal.owner:
            return principal.owner
        if not principal.is_admin:
            raise Forbidden("only an admin can see another owner's bill")
        return owner

    def usage(self, principal: Principal, start: datetime | None, end: datetime | None,
              owner: str | None = None) -> Usage:
        """Billed time and counted tokens per endpoint over [start, end): by default this month (UTC) so far."""
        who = self._owner(principal, owner)
        now = self.clock.now()
        lo = start or month_bounds(month_of(now))[0]
        hi = end or now
        if hi < lo:
            raise InvalidRequest("end must not be before start", param="end")
        names = {e.id: e.name for e in self.store.list_endpoints(who, include_deleted=True)}
        billed = lines(self.store.billed(lo, hi, owner=who))
        # Tokens are counted per UTC day by the gateways: whole days that touch the period.
        tokens = self.store.token_usage(who, f"{lo:%Y-%m-%d}", f"{hi:%Y-%m-%d}")

        def line(eid: str, hardware: str | None, seconds: Fraction, cents: Decimal) -> UsageLine:
            requests, tokens_in, tokens_out = tokens.get(eid, (0, 0, 0))
            return UsageLine(eid, names.get(eid), hardware, seconds, cents, requests, tokens_in, tokens_out)

        out = [line(b.endpoint_id, b.hardware, b.replica_seconds, b.cents) for b in billed]
        seen = {b.endpoint_id for b in billed}
        out += [line(eid, None, Fraction(0), Decimal(0)) for eid in sorted(tokens) if eid not in seen]
        return Usage(who, lo, hi, out, sum((b.cents for b in billed), Decimal(0)))

    def invoice(self, principal: Principal, month: str, owner: str | None = None) -> bytes:
        who = self._owner(principal, owner)
        m = parse_month(month)
        lo, hi = month_bounds(m)
        names = {e.id: e.name for e in self.store.list_endpoints(who, include_deleted=True)}
        return invoice_bytes(invoice_of(who, m, lines(self.store.billed(lo, hi, owner=who)), names))

    def month_so_far(self) -> tuple[datetime, datetime]:
        """[the start of this month, now): the period ``endpoint_cost`` charges."""
        now = self.clock.now()
        return month_bounds(month_of(now))[0], now

    def endpoint_cost(self, ep: Endpoint, ready: int, billed: Sequence[Billed] | None = None) -> EndpointCost:
        """This month's charges so far and the burn rate at the current ready count; from ``billed``
        (this endpoint's sums over ``month_so_far``) where the caller read them already."""
        if billed is None:
            lo, now = self.month_so_far()
            billed = self.store.billed(lo, now, endpoint_ids=[ep.id])
        exact = sum((line.exact_cents for line in lines(billed)), Fraction(0))
        return EndpointCost(round_cents(exact), ep.cents_per_minute * ready)

    def costs_this_month(self) -> dict[str, Decimal]:
        """Every endpoint's charges this month so far (as ``endpoint_cost`` has them), from one grouped read of
        the month's intervals: ``/metrics`` costs the same queries for ten endpoints as for ten thousand."""
        now = self.clock.now()
        lo, _ = month_bounds(month_of(now))
        exact: dict[str, Fraction] = {}
        for line in lines(self.store.billed(lo, now)):
            exact[line.endpoint_id] = exact.get(line.endpoint_id, Fraction(0)) + line.exact_cents
        return {eid: round_cents(cents) for eid, cents in exact.items()}

    def month_to_date(self, owner: str, now: datetime) -> Decimal:
        lo, _ = month_bounds(month_of(now))
        spent = lines(self.store.billed(lo, now, owner=owner))
        return round_cents(sum((line.exact_cents for line in spent), Fraction(0)))

    def set_budget(self, principal: Principal, req: BudgetUpdate, owner: str | None = None) -> Budget:
        who = self._owner(principal, owner)
        self.store.set_budget(who, req.monthly_cents, req.stop_at_limit, self.clock.now())
        return self.budget(principal, who)

    def budget(self, principal: Principal, owner: str | None = None) -> Budget:
        who = self._owner(principal, owner)
        cents, stop = self.store.budget(who)
        alerts = [BudgetAlert(a["month"], a["threshold"], a["at"], a["message"]) for a in self.store.alerts(who)]
        return Budget(who, cents, stop, self.month_to_date(who, self.clock.now()), alerts)

    def check_budgets(self, store: Store) -> list[str]:
        """Record 80% and 100% alerts once a month; stop opted-in owners' endpoints at 100%.

        ``store`` is the reconciler's (fenced) store: only the lease holder stops endpoints.
        Returns the ids of the endpoints it stopped.
        """
        now = self.clock.now()
        month = month_of(now)
        stopped: list[str] = []
        for owner, (cents, stop) in store.budgets().items():
            if cents <= 0:
                continue
            spent = self.month_to_date(owner, now)
            for threshold in ALERT_THRESHOLDS:
                if spent * 100 >= cents * threshold:
                    store.add_alert(owner, month, threshold, now,
                                    f"{spent} of {cents} cents spent in {month} ({threshold}% of the budget)")
            if stop and spent >= cents:
                for ep in store.list_endpoints(owner):
                    if ep.intent is Intent.RUN and store.change_state(
                            ep, now, EndpointState.STOPPING,
                            ("stopped", f"stopped: the monthly budget of {cents} cents is reached ({spent} spent)"),
                            intent=Intent.STOP, status_message="stopping: budget reached"):
                        stopped.append(ep.id)
        return stopped
