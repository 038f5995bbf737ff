"""The store's core: the database session, transactions, and the fence that guards a lease holder's writes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Self

from sqlalchemy import update
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session

from dedicate.store.columns import to_driver
from dedicate.store.db import session_factory
from dedicate.store.tables import LeaseRow, OwnerRow, UTCDateTime


@functools.cache
def _time_processor(dialect: Dialect) -> Callable[[Any], Any] | None:
    # The dialect's own implementation (SQLite's DATETIME writes "YYYY-MM-DD HH:MM:SS.ffffff"), as
    # SQLAlchemy itself binds: the plain type would leave the value to the driver's own format.
    return UTCDateTime().dialect_impl(dialect).bind_processor(dialect)


class StaleLease(Exception):
    """A fenced write found that its lease has moved to another holder: nothing was written."""


class StoreBase:
    """All persistence. Each method is one short transaction.

    ``fenced(name, token)`` gives a view of the store whose replica and endpoint
    writes commit only while lease ``name`` still carries ``token``: a
    reconciler that lost its lease (paused, partitioned) cannot act any more.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)
        self._fence: tuple[str, int] | None = None

    def fenced(self, name: str, token: int) -> Self:
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)  # the engine, the sessions and the caches are shared
        view._fence = (name, token)
        return view

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    @staticmethod
    def raw(s: Session, sql: str, params: Sequence[Any] | Sequence[Sequence[Any]] | None = None
            ) -> Any:  # the driver's cursor: iterate it for rows, ``rowcount`` for writes
        """A hot statement in plain SQL on the driver's cursor, in the session's transaction.

        ``?`` marks a parameter (rewritten for drivers that mark them otherwise); a list of tuples
        is an executemany. Values go in as the driver takes them (times as ``db_time`` gives them).
        Only for the reads and writes a pass makes per replica: SQLAlchemy's own handling of each
        parameter set costs more than the statement itself there. Everything else is SQLAlchemy.
        """
        conn = s.connection()
        if conn.dialect.paramstyle != "qmark":
            sql = sql.replace("?", "%s")
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        if params and isinstance(params, list):
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params or ())
        return cursor

    @staticmethod
    def db_time(s: Session, at: datetime) -> Any:
        """``at`` as the driver stores it in a ``UTCDateTime`` column (what SQLAlchemy would send)."""
        process = _time_processor(s.get_bind().dialect)
        return process(at) if process is not None else at

    # A pass's batches in plain SQL: a guarded write a row, the events in one executemany.

    def _raw_guarded(self, s: Session, table: str, row_id: str, version: int, values: Mapping[str, Any]) -> bool:
        """``UPDATE table SET values, version+1 WHERE id AND version``; whether it applied.

        The column names are this module's own, never a caller's input.
        """
        cols = ", ".join(f"{c} = ?" for c in values)
        dialect = s.get_bind().dialect
        params = (*(to_driver(dialect, table, c, v) for c, v in values.items()), version + 1, row_id, version)
        return bool(self.raw(s, f"UPDATE {table} SET {cols}, version = ? WHERE id = ? AND version = ?",
                             params).rowcount == 1)

    def _raw_events(self, s: Session, events: Sequence[tuple[str, datetime, str, str]]) -> None:
        if events:
            self.raw(s, "INSERT INTO endpoint_events (endpoint_id, at, kind, message) VALUES (?, ?, ?, ?)",
                     [(e, self.db_time(s, at), kind, msg) for e, at, kind, msg in events])

    def _check_fence(self, s: Session) -> None:
        if self._fence is None:
            return
        name, token = self._fence
        # A write, not a read: it starts the transaction and takes the lease row's lock on every
        # backend (SQLite begins its transaction only at the first write), so the lease cannot
        # change hands between this check and the writes that follow it.
        res = s.execute(update(LeaseRow).where(LeaseRow.name == name, LeaseRow.token == token)
                        .values(token=LeaseRow.token))
        if res.rowcount != 1:  # type: ignore[attr-defined]
            raise StaleLease(f"lease {name} moved on from token {token}")

    def ensure_owner(self, s: Session, owner: str, now: datetime) -> None:
        if s.get(OwnerRow, owner) is None:
            s.add(OwnerRow(name=owner, created_at=now))
            s.flush()
