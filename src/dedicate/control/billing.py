"""Billing use cases: usage, invoices, an endpoint's cost, budgets and their alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from dedicate.clock import Clock
from dedicate.control.auth import Principal
from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.errors import Forbidden, InvalidRequest
from dedicate.domain.records import Endpoint
from dedicate.metering.ledger import fmt_fraction, invoice, invoice_bytes, month_bounds, month_of, usage
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
        if owner is None or owner == principal.owner:
            return principal.owner
        if not principal.is_admin:
            raise Forbidden("only an admin can see another owner's bill")
        return owner

    def usage(self, principal: Principal, start: str | None, end: str | None, owner: str | None = None
              ) -> dict[str, Any]:
        who = self._owner(principal, owner)
        now = self.clock.now()
        lo = parse_time(start, "start") or month_bounds(month_of(now))[0]
        hi = parse_time(end, "end") or now
        if hi < lo:
            raise InvalidRequest("end must not be before start", param="end")
        names = {e.id: e.name for e in self.store.list_endpoints(who, include_deleted=True)}
        lines = usage(self.store.intervals(owner=who, start=lo, end=hi), lo, hi)
        # Tokens are counted per UTC day by the gateways: whole days that touch the period.
        tokens = self.store.token_usage(who, f"{lo:%Y-%m-%d}", f"{hi:%Y-%m-%d}")

        def row(eid: str, hardware: str | None, seconds: str, minutes: str, cents: str) -> dict[str, Any]:
            requests, tokens_in, tokens_out = tokens.get(eid, (0, 0, 0))
            return {"object": "usage", "endpoint": eid, "endpoint_name": names.get(eid), "hardware": hardware,
                    "replica_seconds": seconds, "replica_minutes": minutes, "cents": cents,
                    "requests": requests, "tokens_in": tokens_in, "tokens_out": tokens_out}

        data = [row(line.endpoint_id, line.hardware, fmt_fraction(line.replica_seconds),
                    fmt_fraction(line.replica_minutes), str(line.cents)) for line in lines]
        billed = {line.endpoint_id for line in lines}
        data += [row(eid, None, "0.000000", "0.000000", "0") for eid in sorted(tokens) if eid not in billed]
        return {"object": "list", "owner": who, "start": lo.isoformat(), "end": hi.isoformat(), "data": data,
                "total_cents": str(sum((line.cents for line in lines), Decimal(0)))}

    def invoice(self, principal: Principal, month: str, owner: str | None = None) -> bytes:
        who = self._owner(principal, owner)
        m = parse_month(month)
        lo, hi = month_bounds(m)
        names = {e.id: e.name for e in self.store.list_endpoints(who, include_deleted=True)}
        return invoice_bytes(invoice(who, m, self.store.intervals(owner=who, start=lo, end=hi), names))

    def endpoint_cost(self, ep: Endpoint, ready: int) -> dict[str, str]:
        """This month's charges so far and the burn rate at the current ready count."""
        now = self.clock.now()
        lo, _ = month_bounds(month_of(now))
        lines = usage(self.store.intervals(endpoint_id=ep.id, start=lo, end=now), lo, now)
        exact = sum((line.exact_cents for line in lines), Fraction(0))
        return {"cost_this_month_cents": str(round_cents(exact)),
                "burn_rate_cents_per_minute": str(ep.cents_per_minute * ready)}

    def costs_this_month(self) -> dict[str, Decimal]:
        """Every endpoint's charges this month so far (as ``endpoint_cost`` has them), from one read of the
        month's intervals: ``/metrics`` costs the same queries for ten endpoints as for ten thousand."""
        now = self.clock.now()
        lo, _ = month_bounds(month_of(now))
        exact: dict[str, Fraction] = {}
        for line in usage(self.store.intervals(start=lo, end=now), lo, now):
            exact[line.endpoint_id] = exact.get(line.endpoint_id, Fraction(0)) + line.exact_cents
        return {eid: round_cents(cents) for eid, cents in exact.items()}

    def month_to_date(self, owner: str, now: datetime) -> Decimal:
        lo, _ = month_bounds(month_of(now))
        lines = usage(self.store.intervals(owner=owner, start=lo, end=now), lo, now)
        return round_cents(sum((line.exact_cents for line in lines), Fraction(0)))

    def set_budget(self, principal: Principal, body: object, owner: str | None = None) -> dict[str, Any]:
        who = self._owner(principal, owner)
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        raw = body.get("monthly_cents")
        cents: Decimal | None = None
        if raw is not None:
            try:
                cents = Decimal(str(raw))
            except InvalidOperation as exc:
                raise InvalidRequest("monthly_cents must be a number of cents, or null for none",
                                     param="monthly_cents") from exc
            if not cents.is_finite() or cents < 0:
                raise InvalidRequest("monthly_cents must be a finite, non-negative number of cents",
                                     param="monthly_cents")
        stop = body.get("stop_at_limit", False)
        if not isinstance(stop, bool):
            raise InvalidRequest("stop_at_limit must be true or false", param="stop_at_limit")
        self.store.set_budget(who, cents, stop, self.clock.now())
        return self.budget(principal, who)

    def budget(self, principal: Principal, owner: str | None = None) -> dict[str, Any]:
        who = self._owner(principal, owner)
        cents, stop = self.store.budget(who)
        alerts = [{**a, "at": a["at"].isoformat()} for a in self.store.alerts(who)]
        return {"object": "budget", "owner": who, "monthly_cents": None if cents is None else str(cents),
                "stop_at_limit": stop, "month_to_date_cents": str(self.month_to_date(who, self.clock.now())),
                "alerts": alerts}

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
