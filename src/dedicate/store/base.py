"""The store's core: the database session, transactions, and the fence that guards a lease holder's writes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Self

from sqlalchemy import update
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session

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
