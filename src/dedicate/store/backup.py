"""Backups: a consistent online copy of the database in one SQLite file, and its restore.

A backup is always a SQLite file, whatever the database: one file is easy to move, inspect
(``sqlite3 backup.db``) and keep, and it restores into SQLite or PostgreSQL alike, so a backup
also moves an installation from one to the other.

- From SQLite, SQLite's own online backup copies the pages of one read snapshot while the server
  goes on writing.
- From PostgreSQL, every table is read in one ``REPEATABLE READ READ ONLY`` transaction (one
  snapshot) into a new SQLite file made by the same migrations, at the same revision.

A restore first brings a copy of the backup to this code's schema with the migrations (an older
backup is upgraded the way a database is), then replaces every row of the target database with
the backup's, in one transaction: all of it or nothing. Leases are not restored: they say which
process acts as the reconciler now, not what the installation holds. A restore refuses while a
server holds the reconciler's lease on the target, and refuses a target that holds data unless
told to replace it.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.engine import Connection, Engine

from dedicate.store.db import MIGRATIONS_TABLE, SchemaError, head_revision, make_engine, migrate, schema_revision
from dedicate.store.tables import Base, LeaseRow

ROWS_PER_BATCH = 1000
NOT_RESTORED = frozenset({LeaseRow.__tablename__})


class BackupError(Exception):
    """A backup or a restore that cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Summary:
    path: Path
    revision: str
    rows: dict[str, int]  # per table


def tables() -> list[Table]:
    """Every table of the schema, parents before children."""
    return list(Base.metadata.sorted_tables)


def backup(source: Engine, path: Path) -> Summary:
    """A consistent copy of ``source``, while it is in use, into the new SQLite file ``path``."""
    if path.exists():
        raise BackupError(f"{path} exists: a backup never overwrites a file; choose a new path")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent} is not a directory")
    revision = schema_revision(source)
    if revision is None:
        raise BackupError("the database has no schema yet: there is nothing to back up")
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        if source.dialect.name == "sqlite":
            _sqlite_copy(source, partial)
        else:
            _snapshot_copy(source, partial, revision)
        _one_file(partial)
        summary = inspect(partial)
        partial.rename(path)  # a reader never sees half a backup
    finally:
        partial.unlink(missing_ok=True)
    return Summary(path, summary.revision, summary.rows)


def _one_file(path: Path) -> None:
    """The backup as one self-contained file: out of WAL mode, nothing in a ``-wal`` beside it."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()


def _pages(src: sqlite3.Connection, dest: Path) -> None:
    """SQLite's online backup of ``src`` into the file ``dest``: one snapshot, page by page, while
    writers go on (and with whatever a ``-wal`` beside the source holds)."""
    out = sqlite3.connect(dest)
    try:
        src.backup(out)
    finally:
        out.close()


def _sqlite_copy(source: Engine, dest: Path) -> None:
    with source.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        _pages(raw, dest)


def _snapshot_copy(source: Engine, dest: Path, revision: str) -> None:
    if revision != head_revision():  # the rows are copied as this code's tables describe them
        raise BackupError(f"the database is at schema revision {revision} and this dedicate at {head_revision()}: "
                          "back it up with the dedicate that serves it")
    target = make_engine(f"sqlite:///{dest}")
    try:
        migrate(target)  # the same schema the source has (this code's), by the same migrations
        with source.connect().execution_options(isolation_level="REPEATABLE READ",
                                                postgresql_readonly=True) as src, target.begin() as out:
            if schema_revision(src) != revision:
                raise BackupError("the database was migrated while the backup began: run it again")
            _copy_rows(src, out, tables())
    finally:
        target.dispose()


def _copy_rows(src: Connection, out: Connection, which: list[Table]) -> None:
    for t in which:
        result = src.execution_options(yield_per=ROWS_PER_BATCH).execute(select(t))
        for batch in result.mappings().partitions(ROWS_PER_BATCH):
            out.execute(insert(t), [dict(r) for r in batch])


def _read_into(path: Path, copy: Path) -> None:
    """A working copy of a backup file, left as it is."""
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        _pages(src, copy)
    finally:
        src.close()


@contextmanager
def _opened(path: Path) -> Iterator[Engine]:
    """A backup file, opened read-only."""
    if not path.is_file():
        raise BackupError(f"{path} is not a file")
    with path.open("rb") as f:
        if f.read(16) != b"SQLite format 3\0":
            raise BackupError(f"{path} is not a dedicate backup (not a SQLite file)")
    engine = make_engine(f"sqlite:///file:{path}?mode=ro&uri=true", wal=False)
    try:
        yield engine
    finally:
        engine.dispose()


def inspect(path: Path) -> Summary:
    """What a backup file holds: its schema revision and its rows per table."""
    with _opened(path) as engine:
        revision = schema_revision(engine)
        if revision is None:
            raise BackupError(f"{path} is not a dedicate backup (no {MIGRATIONS_TABLE} table)")
        with engine.connect() as conn:
            present = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
            rows = {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                    for t in tables() if t.name in present}
    return Summary(path, revision, rows)


def restore(target: Engine, path: Path, *, replace: bool = False, now: datetime | None = None) -> Summary:
    """Every row of the backup ``path`` into ``target`` (at this code's schema), in one transaction."""
    found = inspect(path)
    now = now or datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="dedicate-restore-") as tmp:
        copy = Path(tmp) / "backup.db"
        _read_into(path, copy)
        staged = make_engine(f"sqlite:///{copy}")
        try:
            try:
                migrate(staged)  # an older backup is upgraded as a database is; a newer one is refused
            except SchemaError as exc:
                raise BackupError(f"{path}: {exc}") from exc
            migrate(target)
            restored = [t for t in tables() if t.name not in NOT_RESTORED]
            with staged.connect() as src, target.begin() as out:
                _refuse_if_running(out, now)
                held = {t.name: n for t in restored
                        if (n := int(out.execute(select(func.count()).select_from(t)).scalar_one()))}
                if held and not replace:
                    raise BackupError("the database holds data (" + ", ".join(f"{n} {t}" for t, n in held.items())
                                      + "): restore into an empty database, or pass --replace to replace it all")
                for t in reversed(restored):
                    out.execute(delete(t))
                _copy_rows(src, out, restored)
                _advance_sequences(out, restored)
        finally:
            staged.dispose()
    return Summary(path, found.revision, {t: n for t, n in found.rows.items() if t not in NOT_RESTORED})


def _refuse_if_running(conn: Connection, now: datetime) -> None:
    for lease in conn.execute(select(LeaseRow)):
        if lease.expires_at > now:
            raise BackupError(f"a dedicate server ({lease.holder}) holds this database's reconciler lease until "
                              f"{lease.expires_at:%H:%M:%S} UTC: stop every server that uses it, then restore")


def _advance_sequences(conn: Connection, which: list[Table]) -> None:
    """PostgreSQL's identity sequences past the restored ids (SQLite takes max(id) + 1 by itself)."""
    if conn.dialect.name != "postgresql":
        return
    for t in which:
        for c in t.primary_key.columns:
            if c.autoincrement is True:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{t.name}', '{c.name}'), "
                                  f"COALESCE((SELECT MAX({c.name}) FROM {t.name}), 0) + 1, false)"))
