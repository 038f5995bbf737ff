"""Records' fields as columns, and values as the driver takes them: shared by the store's modules."""

from __future__ import annotations

import enum
import functools
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Column, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import InvalidRequestError

from dedicate.domain.records import Slots
from dedicate.store.tables import Base

CHUNK = 500  # ids per IN (...) list, well under every backend's limit on bound parameters


def parse_slots(text: str) -> Slots:
    """The one place a replica's stored slots ("0,1") become numbers."""
    return tuple(int(s) for s in text.split(",") if s.strip())


def format_slots(slots: Slots) -> str:
    return ",".join(str(s) for s in slots)


def replica_columns(changes: dict[str, Any]) -> dict[str, Any]:
    """Record-level changes (``address``, ``slots``) as the columns that store them."""
    out = dict(changes)
    if "address" in out:
        a = out.pop("address")
        out["host"], out["port"] = (a.host, a.port) if a is not None else (None, None)
    if "slots" in out:
        out["slots"] = format_slots(out["slots"])
    return out


def table(row: type[Any]) -> Table:
    """A mapped class's table: statements on it skip the ORM (no autoflush, no identity map)."""
    return cast(Table, row.__table__)


@functools.cache
def bind_processor(dialect: Dialect, table: str, column: str) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to a value of ``table.column`` before the driver gets it."""
    return Base.metadata.tables[table].c[column].type.dialect_impl(dialect).bind_processor(dialect)


@functools.cache
def result_processor(dialect: Dialect, table: str, column: str) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to a value of ``table.column`` the driver returns."""
    return _result_processor(dialect, Base.metadata.tables[table].c[column])


def _result_processor(dialect: Dialect, column: Column[Any]) -> Callable[[Any], Any] | None:
    try:
        return column.type.dialect_impl(dialect).result_processor(dialect, None)
    except (TypeError, InvalidRequestError):
        # PostgreSQL's NUMERIC asks for the column's type code; psycopg returns a Decimal for it itself
        return None


def to_driver(dialect: Dialect, table: str, column: str, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    process = bind_processor(dialect, table, column)
    return value if process is None or value is None else process(value)


@functools.cache
def row_reader(dialect: Dialect, table: str) -> tuple[str, Callable[[Sequence[Any]], Any]]:
    """Every column of ``table`` for a plain ``SELECT``, and what turns a driver's row of them into
    one with attributes, its values as SQLAlchemy would give them: a hot read skips the ORM."""
    columns = list(Base.metadata.tables[table].c)
    shape = namedtuple(f"{table}_row", [c.name for c in columns])  # type: ignore[misc]
    processors = [(i, p) for i, c in enumerate(columns) if (p := _result_processor(dialect, c)) is not None]

    def read(values: Sequence[Any]) -> Any:
        out = list(values)
        for i, process in processors:
            out[i] = process(out[i])
        return shape._make(out)

    return ", ".join(c.name for c in columns), read
