"""Database engine, sessions and migrations (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


MIGRATIONS_TABLE = "alembic_version"


class SchemaError(Exception):
    """The database's schema is not one this code can use (newer than it); the message says what to do."""


def make_engine(url: str, *, wal: bool = True) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if wal:  # (not on a read-only file: a backup being inspected)
                cur.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit is on disk before it returns, so a billed interval or a state change
            # the API answered survives a power cut too (NORMAL, in WAL mode, keeps it through a crash
            # of the process only).
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def schema_revision(bind: Engine | Connection) -> str | None:
    """The database's schema revision; None for an empty database."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return schema_revision(conn)
    return MigrationContext.configure(bind).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``, the newest by default (idempotent). A database made by a newer
    dedicate is refused, untouched: this code cannot know what its schema means."""
    cfg = _config()
    scripts = ScriptDirectory.from_config(cfg)
    with engine.begin() as conn:
        current = schema_revision(conn)
        if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
            raise SchemaError(f"the database is at schema revision {current}, which this dedicate does not know "
                              f"(its newest is {scripts.get_current_head()}): it was made by a newer dedicate; "
                              "run that version, or restore a backup made by this one")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
