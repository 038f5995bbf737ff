"""The billing ledger: good probes move a replica's facts and its billing interval together."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dedicate.domain.records import Replica
from dedicate.metering.ledger import Billed, Interval
from dedicate.store.columns import CHUNK, replica_columns, result_processor, row_reader, to_driver
from dedicate.store.tables import IntervalRow, ReplicaRow
from dedicate.store.usage import UsageStore


@dataclass(frozen=True)
class GoodProbe:
    """One good probe that moves a replica's facts (``record_probe_ok``'s arguments)."""

    replica: Replica
    event: tuple[str, str] | None
    changes: Mapping[str, Any]
    owner: str
    hardware: str
    cents_per_minute: Decimal


# Per backend: a time column as whole microseconds since the epoch (``{t}``), and the larger and the
# smaller of two values. SQLite keeps times as text, 'YYYY-MM-DD HH:MM:SS.ffffff'; its unixepoch (3.38+)
# is twice as fast as strftime. PostgreSQL's EXTRACT gives an exact numeric.
_SQLITE_SECONDS = "unixepoch({t})" if sqlite3.sqlite_version_info >= (3, 38) else "CAST(strftime('%s', {t}) AS INTEGER)"
_BILLED_SQL = {
    "sqlite": (f"({_SQLITE_SECONDS} * 1000000 + CAST(substr({{t}}, 21, 6) AS INTEGER))", "MAX", "MIN"),
    "postgresql": ("CAST(EXTRACT(EPOCH FROM {t}) * 1000000 AS BIGINT)", "GREATEST", "LEAST"),
}


class LedgerStore(UsageStore):
    """Good probes (one, a pass's first ones, the steady ones), and the intervals they leave."""

    def record_probe_ok(self, r: Replica, now: datetime, event: tuple[str, str] | None,
                        changes: dict[str, Any], *, owner: str, hardware: str, cents_per_minute: Decimal,
                        max_gap_s: float) -> bool:
        """A good probe: the replica's facts and its billing interval move together, in one transaction.

        The open interval is extended to ``now``; a replica with none gets one opened at ``now``
        (its price copied onto it). A gap longer than ``max_gap_s`` since the last good probe is
        time nobody observed: the old interval stays closed at its last probe, a new one opens.
        """
        probe = GoodProbe(r, event, changes, owner=owner, hardware=hardware, cents_per_minute=cents_per_minute)
        return r.id in self.record_good_probes([probe], now, max_gap_s)

    def record_good_probes(self, probes: Sequence[GoodProbe], now: datetime, max_gap_s: float) -> set[str]:
        """``record_probe_ok`` for each of ``probes``, in one transaction; the ids recorded."""
        events: list[tuple[str, datetime, str, str]] = []
        with self.tx() as s:
            self._check_fence(s)
            dialect = s.get_bind().dialect
            applied = [p for p in probes if self._raw_guarded(s, "replicas", p.replica.id, p.replica.version,
                                                              replica_columns(dict(p.changes)))]
            if not applied:
                return set()
            open_ = self._open_intervals(s, [p.replica.id for p in applied])
            at = self.db_time(s, now)
            extend, close, opened = [], [], []
            for p in applied:
                r = p.replica
                if p.event is not None:
                    events.append((r.endpoint_id, now, *p.event))
                got = open_.get(r.id)
                if got is not None and (now - got[1]).total_seconds() <= max_gap_s:
                    extend.append((at, got[0], at))
                    continue
                if got is not None:  # time nobody observed: the old interval stays closed at its last probe
                    close.append((True, "unobserved gap", got[0]))
                opened.append((r.id, r.endpoint_id, p.owner, p.hardware,
                               to_driver(dialect, "billing_intervals", "cents_per_minute", p.cents_per_minute),
                               at, at, False))
            if extend:
                self.raw(s, "UPDATE billing_intervals SET last_seen_at = ? WHERE id = ? AND last_seen_at < ?", extend)
            if close:  # before the new ones: one open interval a replica
                self.raw(s, "UPDATE billing_intervals SET closed = ?, closed_reason = ? WHERE id = ?", close)
            if opened:
                self.raw(s, "INSERT INTO billing_intervals (replica_id, endpoint_id, owner, hardware, "
                         "cents_per_minute, started_at, last_seen_at, closed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", opened)
            self._raw_events(s, events)
        return {p.replica.id for p in applied}

    def _open_intervals(self, s: Session, replica_ids: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        """Each replica's open interval: its id and its last good probe."""
        seen = result_processor(s.get_bind().dialect, "billing_intervals", "last_seen_at")
        out: dict[str, tuple[int, datetime]] = {}
        for i in range(0, len(replica_ids), CHUNK):
            chunk = replica_ids[i:i + CHUNK]
            marks = ", ".join("?" for _ in chunk)
            for rid, iid, last in self.raw(s, f"SELECT replica_id, id, last_seen_at FROM billing_intervals "
                                              f"WHERE closed = ? AND replica_id IN ({marks})", (False, *chunk)):
                out[rid] = (iid, seen(last) if seen is not None else last)
        return out

    def record_probes_ok(self, replicas: Sequence[Replica], now: datetime, max_gap_s: float) -> set[str]:
        """Good probes of replicas already ready and not failing, in one transaction: the steady case.

        Each one's ``last_probe_ok_at`` and open billing interval move to ``now`` together. A
        replica whose row changed since it was read, or whose interval is closed or older than
        ``max_gap_s``, is left out (the caller records it with ``record_probe_ok``). Returns the
        ids recorded.
        """
        if not replicas:
            return set()
        cutoff = now - timedelta(seconds=max_gap_s)
        with self.tx() as s:
            self._check_fence(s)
            at, since = self.db_time(s, now), self.db_time(s, cutoff)
            # Each write checks its own row (the version as read, an open and recent interval) in the
            # statement; when every one of them applied, as in a steady pass, nothing else is read.
            moved = self.raw(s, "UPDATE billing_intervals SET last_seen_at = ? WHERE replica_id = ? AND closed = ? "
                             "AND last_seen_at >= ? AND last_seen_at < ?",
                             [(at, r.id, False, since, at) for r in replicas]).rowcount
            if moved != len(replicas):  # some were not: find which, and write only those that were
                open_ = {rid for (rid,) in self.raw(
                    s, "SELECT replica_id FROM billing_intervals WHERE closed = ? AND last_seen_at = ?", (False, at))}
                replicas = [r for r in replicas if r.id in open_]
                if not replicas:
                    return set()
            # The version stays: only the last good probe moves, and no decision rests on it, so a
            # guarded write made from the row as read before still holds.
            done = self.raw(s, "UPDATE replicas SET last_probe_ok_at = ? WHERE id = ? AND version = ? "
                            "AND stopped_at IS NULL", [(at, r.id, r.version) for r in replicas]).rowcount
            if done == len(replicas):
                return {r.id for r in replicas}
        return self._record_probes_one_by_one(replicas, now, max_gap_s)

    def _record_probes_one_by_one(self, replicas: Sequence[Replica], now: datetime, max_gap_s: float) -> set[str]:
        """The rare pass where a replica's row moved between its read and its probe: checked row by row."""
        cutoff = now - timedelta(seconds=max_gap_s)
        done: set[str] = set()
        with self.tx() as s:
            self._check_fence(s)
            for r in replicas:
                res = s.execute(update(ReplicaRow).where(ReplicaRow.id == r.id, ReplicaRow.version == r.version,
                                                         ReplicaRow.stopped_at.is_(None))
                                .values(last_probe_ok_at=now))
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                s.execute(update(IntervalRow).where(IntervalRow.replica_id == r.id, IntervalRow.closed.is_(False),
                                                    IntervalRow.last_seen_at >= cutoff,
                                                    IntervalRow.last_seen_at < now).values(last_seen_at=now))
                done.add(r.id)
        return done

    def close_intervals(self, replica_id: str | None, reason: str) -> int:
        """Close open intervals at their last good probe (one replica's, or every one)."""
        with self.tx() as s:
            self._check_fence(s)
            q = update(IntervalRow).where(IntervalRow.closed.is_(False))
            if replica_id is not None:
                q = q.where(IntervalRow.replica_id == replica_id)
            res = s.execute(q.values(closed=True, closed_reason=reason))
            return int(res.rowcount)  # type: ignore[attr-defined]

    def intervals(self, *, owner: str | None = None, endpoint_id: str | None = None,
                  start: datetime | None = None, end: datetime | None = None) -> list[Interval]:
        with self.tx() as s:
            return self._intervals(s, owner=owner, endpoint_id=endpoint_id, start=start, end=end)

    def intervals_of(self, endpoint_ids: Sequence[str], start: datetime, end: datetime) -> list[Interval]:
        """The intervals of ``endpoint_ids`` overlapping [start, end): a page of endpoints in a few reads."""
        out: list[Interval] = []
        with self.tx() as s:
            cols, row = row_reader(s.get_bind().dialect, "billing_intervals")
            lo, hi = self.db_time(s, start), self.db_time(s, end)
            for i in range(0, len(endpoint_ids), CHUNK):
                chunk = list(endpoint_ids[i:i + CHUNK])
                marks = ", ".join("?" for _ in chunk)
                rows = self.raw(s, f"SELECT {cols} FROM billing_intervals WHERE endpoint_id IN ({marks}) "
                                   "AND last_seen_at > ? AND started_at < ? ORDER BY id", (*chunk, lo, hi))
                out.extend(Interval(r.replica_id, r.endpoint_id, r.owner, r.hardware, Decimal(r.cents_per_minute),
                                    r.started_at, r.last_seen_at) for r in map(row, rows))
        return out

    def billed(self, start: datetime, end: datetime, *, owner: str | None = None,
               endpoint_ids: Sequence[str] | None = None) -> list[Billed]:
        """The billed time inside [start, end) of the intervals overlapping it (an owner's, some endpoints',
        or all), summed in the database per endpoint, hardware and price, exact to the microsecond.

        What a month's costs need, in one grouped read whatever the number of intervals: a page of
        endpoints or an invoice no longer reads every interval of the month into Python.
        """
        with self.tx() as s:
            return self._billed(s, start, end, owner=owner, endpoint_ids=endpoint_ids)

    def _billed(self, s: Session, start: datetime, end: datetime, *, owner: str | None = None,
                endpoint_ids: Sequence[str] | None = None) -> list[Billed]:
        dialect = s.get_bind().dialect
        lo, hi = self.db_time(s, start), self.db_time(s, end)
        micros, late, early = _BILLED_SQL["sqlite" if dialect.name == "sqlite" else "postgresql"]
        price = result_processor(dialect, "billing_intervals", "cents_per_minute")
        chunks: list[list[str] | None] = [None] if endpoint_ids is None else \
            [list(endpoint_ids[i:i + CHUNK]) for i in range(0, len(endpoint_ids), CHUNK)]
        out: list[Billed] = []
        for chunk in chunks:
            where, params = ["last_seen_at > ?", "started_at < ?"], [lo, hi]
            if owner is not None:
                where.append("owner = ?")
                params.append(owner)
            if chunk is not None:
                where.append(f"endpoint_id IN ({', '.join('?' for _ in chunk)})")
                params.extend(chunk)
            clipped = (f"SELECT endpoint_id, hardware, cents_per_minute, {late}(started_at, ?) AS lo, "
                       f"{early}(last_seen_at, ?) AS hi FROM billing_intervals WHERE {' AND '.join(where)}")
            rows = self.raw(s, f"SELECT endpoint_id, hardware, cents_per_minute, "
                               f"SUM({micros.format(t='hi')} - {micros.format(t='lo')}) "
                               f"FROM ({clipped}) AS clipped GROUP BY endpoint_id, hardware, cents_per_minute",
                            (lo, hi, *params))
            out.extend(Billed(e, h, Decimal(price(c) if price is not None else c), int(m)) for e, h, c, m in rows if m)
        return out

    def _intervals(self, s: Session, *, owner: str | None = None, endpoint_id: str | None = None,
                   start: datetime | None = None, end: datetime | None = None) -> list[Interval]:
        """Intervals that overlap [start, end), oldest first, in plain SQL: GET of an endpoint reads its own."""
        where, params = [], []
        for sql, value in (("owner = ?", owner), ("endpoint_id = ?", endpoint_id),
                           ("last_seen_at > ?", start), ("started_at < ?", end)):
            if value is not None:
                where.append(sql)
                params.append(self.db_time(s, value) if isinstance(value, datetime) else value)
        cols, row = row_reader(s.get_bind().dialect, "billing_intervals")
        rows = self.raw(s, f"SELECT {cols} FROM billing_intervals"
                           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id", tuple(params))
        return [Interval(r.replica_id, r.endpoint_id, r.owner, r.hardware, Decimal(r.cents_per_minute),
                         r.started_at, r.last_seen_at) for r in map(row, rows)]

    def open_interval_count(self) -> int:
        with self.tx() as s:
            return len(list(s.scalars(select(IntervalRow.id).where(IntervalRow.closed.is_(False)))))

    # events ----------------------------------------------------------------
