"""What the store keeps beside endpoints and replicas: gateway signals and token usage, budgets and
alerts, owners' quotas, and the reconciler lease."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from dedicate.domain import latency
from dedicate.domain.records import DeploymentMinute, EndpointSignals
from dedicate.store.base import StoreBase
from dedicate.store.tables import (
    AlertRow,
    DeploymentMinuteRow,
    EndpointRow,
    LeaseRow,
    OwnerRow,
    SignalRow,
    TokenUsageRow,
)

SIGNAL_ROWS_KEPT_S = 3600.0  # a gateway signal row nobody wrote for this long is deleted
MINUTES_KEPT_DAYS = 7.0  # deployment minutes older than this are deleted: analytics look back a week


class UsageStore(StoreBase):
    # gateway signals -----------------------------------------------------------

    def write_signals(self, gateway: str, now: datetime, rows: Sequence[EndpointSignals],
                      token_deltas: Sequence[tuple[str, str, str, int, int, int]] = (),
                      keep_s: float = SIGNAL_ROWS_KEPT_S) -> None:
        """One gateway process's view of its endpoints, and token usage deltas.

        ``token_deltas`` holds (endpoint id, owner, day, requests, tokens in, tokens out) to add.
        Each gateway keeps its own signal rows; readers sum the fresh ones. Rows not written for
        ``keep_s`` (those of a process that died, or of an endpoint its gateway forgot) are deleted
        first, in one statement: give a ``keep_s`` past the readers' ``fresh_s`` and no sum changes.
        """
        with self.tx() as s:
            s.execute(delete(SignalRow).where(SignalRow.updated_at < now - timedelta(seconds=keep_s)))
            for sig in rows:
                row = s.get(SignalRow, (sig.endpoint_id, gateway))
                values = {"in_flight": sig.in_flight, "queued": sig.queued, "requests_total": sig.requests_total,
                          "errors_total": sig.errors_total, "tokens_in_total": sig.tokens_in_total,
                          "tokens_out_total": sig.tokens_out_total, "last_request_at": sig.last_request_at,
                          "updated_at": now, "peak_load": sig.peak_load}
                if row is None:
                    s.add(SignalRow(endpoint_id=sig.endpoint_id, gateway=gateway, **values))
                else:
                    for k, v in values.items():
                        setattr(row, k, v)
                if sig.last_request_at is not None:
                    s.execute(update(EndpointRow).where(
                        EndpointRow.id == sig.endpoint_id,
                        (EndpointRow.last_request_at.is_(None)) | (EndpointRow.last_request_at < sig.last_request_at),
                    ).values(last_request_at=sig.last_request_at))
            for endpoint_id, owner, day, requests, tokens_in, tokens_out in token_deltas:
                usage = s.get(TokenUsageRow, (endpoint_id, day))
                if usage is None:
                    s.add(TokenUsageRow(endpoint_id=endpoint_id, day=day, owner=owner, requests=requests,
                                        tokens_in=tokens_in, tokens_out=tokens_out))
                else:
                    usage.requests += requests
                    usage.tokens_in += tokens_in
                    usage.tokens_out += tokens_out

    def signals(self, now: datetime, fresh_s: float = 15.0) -> dict[str, EndpointSignals]:
        """Per endpoint, the sum over gateway processes heard from in the last ``fresh_s`` seconds."""
        cutoff = now - timedelta(seconds=fresh_s)
        out: dict[str, EndpointSignals] = {}
        with self.tx() as s:
            for r in s.scalars(select(SignalRow).where(SignalRow.updated_at >= cutoff)):
                prev = out.get(r.endpoint_id)
                last = r.last_request_at
                if prev is not None:
                    last = max((t for t in (prev.last_request_at, last) if t is not None), default=None)
                out[r.endpoint_id] = EndpointSignals(
                    r.endpoint_id,
                    r.in_flight + (prev.in_flight if prev else 0),
                    r.queued + (prev.queued if prev else 0),
                    r.requests_total + (prev.requests_total if prev else 0),
                    r.errors_total + (prev.errors_total if prev else 0),
                    r.tokens_in_total + (prev.tokens_in_total if prev else 0),
                    r.tokens_out_total + (prev.tokens_out_total if prev else 0),
                    last, max(r.updated_at, prev.updated_at) if prev else r.updated_at,
                    # Gateways' peaks need not coincide: their sum can only overstate the busiest moment.
                    max(r.peak_load, r.in_flight + r.queued) + (prev.load if prev else 0),
                )
        return out

    def token_usage(self, owner: str, start_day: str, end_day: str) -> dict[str, tuple[int, int, int]]:
        """Endpoint id → (requests, tokens in, tokens out) over days [start_day, end_day]."""
        with self.tx() as s:
            q = select(TokenUsageRow).where(TokenUsageRow.owner == owner, TokenUsageRow.day >= start_day,
                                            TokenUsageRow.day <= end_day)
            out: dict[str, tuple[int, int, int]] = {}
            for r in s.scalars(q):
                a, b, c = out.get(r.endpoint_id, (0, 0, 0))
                out[r.endpoint_id] = (a + r.requests, b + r.tokens_in, c + r.tokens_out)
            return out

    # budgets ---------------------------------------------------------------

    def set_budget(self, owner: str, cents: Decimal | None, stop: bool, now: datetime) -> None:
        with self.tx() as s:
            self.ensure_owner(s, owner, now)
            s.execute(update(OwnerRow).where(OwnerRow.name == owner)
                      .values(monthly_budget_cents=cents, budget_stop=stop))

    def budgets(self) -> dict[str, tuple[Decimal, bool]]:
        with self.tx() as s:
            return {r.name: (Decimal(r.monthly_budget_cents), r.budget_stop)
                    for r in s.scalars(select(OwnerRow).where(OwnerRow.monthly_budget_cents.is_not(None)))}

    def budget(self, owner: str) -> tuple[Decimal | None, bool]:
        with self.tx() as s:
            row = s.get(OwnerRow, owner)
            if row is None or row.monthly_budget_cents is None:
                return None, bool(row and row.budget_stop)
            return Decimal(row.monthly_budget_cents), row.budget_stop

    def add_alert(self, owner: str, month: str, threshold: int, at: datetime, message: str) -> bool:
        """Record an alert once per owner, month and threshold; False if it was already there."""
        try:
            with self.tx() as s:
                s.add(AlertRow(owner=owner, month=month, threshold=threshold, at=at, message=message))
            return True
        except IntegrityError:
            return False

    def alerts(self, owner: str) -> list[dict[str, Any]]:
        with self.tx() as s:
            q = select(AlertRow).where(AlertRow.owner == owner).order_by(AlertRow.id)
            return [{"month": a.month, "threshold": a.threshold, "at": a.at, "message": a.message}
                    for a in s.scalars(q)]

    # deployment minutes (v2 analytics) ----------------------------------------

    def write_minutes(self, gateway: str, rows: Sequence[DeploymentMinute], now: datetime,
                      keep_days: float = MINUTES_KEPT_DAYS) -> None:
        """This gateway's count of each minute, replacing what it wrote of that minute before; minutes
        older than ``keep_days`` (every gateway's) are deleted first."""
        with self.tx() as s:
            s.execute(delete(DeploymentMinuteRow).where(DeploymentMinuteRow.minute < now - timedelta(days=keep_days)))
            for m in rows:
                values = {"requests": m.requests, "failures": m.failures, "tokens_in": m.tokens_in,
                          "tokens_out": m.tokens_out, "statuses": json.dumps(m.statuses, sort_keys=True),
                          "ttft": json.dumps(m.ttft), "latency": json.dumps(m.latency)}
                row = s.get(DeploymentMinuteRow, (m.endpoint_id, m.minute, gateway))
                if row is None:
                    s.add(DeploymentMinuteRow(endpoint_id=m.endpoint_id, minute=m.minute, gateway=gateway, **values))
                else:
                    for k, v in values.items():
                        setattr(row, k, v)

    def minutes(self, endpoint_ids: Sequence[str], start: datetime, end: datetime) -> list[DeploymentMinute]:
        """The minutes of ``endpoint_ids`` in [start, end), every gateway's summed, oldest first."""
        out: dict[tuple[str, datetime], DeploymentMinute] = {}
        with self.tx() as s:
            q = (select(DeploymentMinuteRow).where(DeploymentMinuteRow.endpoint_id.in_(list(endpoint_ids)),
                                                   DeploymentMinuteRow.minute >= start,
                                                   DeploymentMinuteRow.minute < end))
            for r in s.scalars(q):
                m = out.get((r.endpoint_id, r.minute))
                if m is None:
                    m = out[(r.endpoint_id, r.minute)] = DeploymentMinute(r.endpoint_id, r.minute,
                                                                          ttft=latency.empty(),
                                                                          latency=latency.empty())
                m.requests += r.requests
                m.failures += r.failures
                m.tokens_in += r.tokens_in
                m.tokens_out += r.tokens_out
                for code, n in json.loads(r.statuses).items():
                    m.statuses[code] = m.statuses.get(code, 0) + int(n)
                m.ttft = latency.merged([m.ttft, json.loads(r.ttft)])
                m.latency = latency.merged([m.latency, json.loads(r.latency)])
        return sorted(out.values(), key=lambda m: (m.minute, m.endpoint_id))

    # owners and quotas -------------------------------------------------------

    def owners_after(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` owner names after ``after``, in name order (the primary key's)."""
        with self.tx() as s:
            q = select(OwnerRow.name).order_by(OwnerRow.name).limit(limit)
            if after is not None:
                q = q.where(OwnerRow.name > after)
            return list(s.scalars(q))

    def owner_quota(self, owner: str) -> int | None:
        with self.tx() as s:
            row = s.get(OwnerRow, owner)
            return None if row is None else row.gpu_quota

    def quotas(self) -> dict[str, int]:
        with self.tx() as s:
            return {r.name: r.gpu_quota for r in s.scalars(select(OwnerRow)) if r.gpu_quota is not None}

    def set_quota(self, owner: str, gpus: int | None, now: datetime) -> None:
        with self.tx() as s:
            self.ensure_owner(s, owner, now)
            s.execute(update(OwnerRow).where(OwnerRow.name == owner).values(gpu_quota=gpus))

    # the reconciler lease ------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl_s: float,
                      steal_from: str | None = None) -> int | None:
        """Take or renew the lease; the fencing token if ``holder`` holds it now, else None.

        A holder renews its own lease; anyone takes an expired one, and taking it
        bumps the token, so a stale holder's token no longer matches.
        """
        expires = now + timedelta(seconds=ttl_s)
        with self.tx() as s:
            row = s.get(LeaseRow, name)
            if row is None:
                try:
                    with s.begin_nested():
                        s.add(LeaseRow(name=name, holder=holder, token=1, expires_at=expires))
                    return 1
                except IntegrityError:
                    return None
            if row.holder != holder and row.expires_at > now and row.holder != steal_from:
                return None
            token = row.token if row.holder == holder else row.token + 1
            res = s.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.token == row.token, LeaseRow.holder == row.holder)
                .values(holder=holder, token=token, expires_at=expires)
            )
            return token if res.rowcount == 1 else None  # type: ignore[attr-defined]

    def release_lease(self, name: str, holder: str) -> None:
        with self.tx() as s:
            s.execute(update(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder)
                      .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC)))

    def lease(self, name: str) -> tuple[str, int, datetime] | None:
        with self.tx() as s:
            row = s.get(LeaseRow, name)
            return None if row is None else (row.holder, row.token, row.expires_at)
