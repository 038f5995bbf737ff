"""`dedicate backup PATH` and `dedicate restore PATH`: the database as one file, and back.

They work on the database the server uses (the config file's ``database_url``, or the data
directory's SQLite file), found exactly as ``dedicate up`` finds it; not through the API: a
restore must run while no server does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dedicate.cli.common import fail, json_opt, out
from dedicate.settings import ConfigError, load_settings

if TYPE_CHECKING:  # the store (SQLAlchemy, alembic) is imported by these two commands only: the others start fast
    from dedicate.store.backup import Summary


def _database_url() -> str:
    try:
        return load_settings().database_url
    except ConfigError as exc:
        fail(f"config: {exc}")


def _said(verb: str, s: Summary) -> dict[str, object]:
    return {"path": str(s.path), "schema_revision": s.revision, "rows": s.rows, verb: True}


def _describe(verb: str, s: Summary) -> str:
    counts = ", ".join(f"{n} {t}" for t, n in sorted(s.rows.items()) if n)
    return f"{verb} {s.path} (schema {s.revision}): {counts or 'no rows'}"


@click.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@json_opt
def backup_cmd(path: Path, as_json: bool) -> None:
    """Copy the database, consistently and while the server runs, into the new SQLite file PATH."""
    from dedicate.store.backup import BackupError, backup
    from dedicate.store.db import make_engine

    engine = make_engine(_database_url())
    try:
        s = backup(engine, path)
    except BackupError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    out(_said("backed_up", s), as_json, _describe("backed up to", s))


@click.command("restore")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="replace a database that holds data (every row of it)")
@json_opt
def restore_cmd(path: Path, replace: bool, as_json: bool) -> None:
    """Put the backup PATH in place of the database's contents; every server that uses it must be stopped."""
    from dedicate.store.backup import BackupError, restore
    from dedicate.store.db import SchemaError, make_engine

    engine = make_engine(_database_url())
    try:
        s = restore(engine, path, replace=replace)
    except (BackupError, SchemaError) as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    out(_said("restored", s), as_json, _describe("restored from", s))
