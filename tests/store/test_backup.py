"""Backups and restores: a consistent copy taken while the installation runs gives back the same bills,
on SQLite and PostgreSQL, in either direction; and every way one can go wrong is refused, untouched."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Engine

from dedicate.cli.main import main as cli
from dedicate.store.backup import NOT_RESTORED, BackupError, backup, inspect, restore, tables
from dedicate.store.db import SchemaError, head_revision, make_engine, migrate, schema_revision
from dedicate.store.repos import Store
from dedicate.store.tables import EventRow, LeaseRow
from tests.conftest import _new_pg_database
from tests.control.test_billing import Billed
from tests.control.test_capacity import ALICE, BOB


def contents(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every restorable row of every table, in a stable order."""
    with engine.connect() as conn:
        return {t.name: sorted((tuple(r) for r in conn.execute(select(t))), key=repr)
                for t in tables() if t.name not in NOT_RESTORED}


def url_on(backend: str, tmp_path: Path, name: str, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / f'{name}.db'}"
    return _new_pg_database(request.getfixturevalue("pg_server"))


def fresh(url: str) -> Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine


@pytest.mark.parametrize("target", ["sqlite", "postgres"])
def test_a_backup_taken_mid_run_restores_to_byte_identical_invoices(
        tmp_path: Path, db_url: str, target: str, request: pytest.FixtureRequest) -> None:
    f = Billed(tmp_path, db_url)
    a = f.create(ALICE, 1, 1)
    f.create(BOB, 2, 1)
    f.run(40, step=1.5)  # replicas ready and billed, intervals open
    month = f"{f.clock.now():%Y-%m}"
    at_backup = {who.owner: f.svc.billing.invoice(who, month) for who in (ALICE, BOB)}
    usage_at_backup = f.svc.billing.usage(ALICE, None, f.clock.now())
    saved = backup(f.store.engine, tmp_path / "mid-run.db")
    assert saved.revision == head_revision() and saved.rows["billing_intervals"] >= 2
    f.run(30)  # the installation goes on: its bill grows past the backup
    assert f.svc.billing.invoice(ALICE, month) != at_backup["alice"]

    restored_engine = fresh(url_on(target, tmp_path, "restored", request))
    restore(restored_engine, saved.path)
    back = Store(restored_engine)
    from dedicate.control.services import Services

    svc = Services(back, f.settings, f.clock, f.runtime.nodes, lambda: None)
    for who in (ALICE, BOB):
        assert svc.billing.invoice(who, month) == at_backup[who.owner], "recomputed from the restored intervals"
    assert svc.billing.usage(ALICE, None, usage_at_backup.end) == usage_at_backup
    assert back.get_endpoint(a) is not None and len(back.intervals()) == saved.rows["billing_intervals"]
    assert back.lease("reconciler") is None, "the lease is not restored: a new server takes it"


def test_a_restore_gives_back_every_row_and_new_rows_get_new_ids(
        tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> None:
    f = Billed(tmp_path, db_url)
    e = f.create(ALICE, 1, 1)
    f.run(10)
    saved = backup(f.store.engine, tmp_path / "b.db")
    for target in ("sqlite", "postgres"):
        engine = fresh(url_on(target, tmp_path, f"to-{target}", request))
        restore(engine, saved.path)
        assert contents(engine) == contents(f.store.engine), target
        # an event written after the restore takes an id past the restored ones (PostgreSQL's sequences moved)
        restored_ids = [r[0] for r in engine.connect().execute(text("SELECT id FROM endpoint_events"))]
        with engine.begin() as conn:
            conn.execute(insert(EventRow).values(endpoint_id=e, at=f.clock.now(), kind="note", message="after"))
        ids = [r[0] for r in engine.connect().execute(text("SELECT id FROM endpoint_events"))]
        assert len(ids) == len(set(ids)) == len(restored_ids) + 1 and max(ids) > max(restored_ids), target
        engine.dispose()


def test_a_restore_replaces_what_is_there_only_when_told_and_all_at_once(tmp_path: Path) -> None:
    src = Billed(tmp_path / "src", f"sqlite:///{tmp_path / 'src.db'}")
    src.create(ALICE, 1, 1)
    src.run(5)
    saved = backup(src.store.engine, tmp_path / "b.db")
    other = Billed(tmp_path / "other", f"sqlite:///{tmp_path / 'other.db'}")
    kept = other.create(BOB, 1, 1)
    before = contents(other.store.engine)
    with pytest.raises(BackupError, match=r"holds data .*--replace"):
        restore(other.store.engine, saved.path)
    assert contents(other.store.engine) == before, "refused: nothing changed"
    restore(other.store.engine, saved.path, replace=True)
    assert contents(other.store.engine) == contents(src.store.engine)
    assert other.store.get_endpoint(kept) is None


def test_a_restore_is_refused_while_a_server_holds_the_lease(tmp_path: Path) -> None:
    f = Billed(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    f.create(ALICE, 1, 1)
    f.run(3)  # the reconciler holds its lease
    saved = backup(f.store.engine, tmp_path / "b.db")
    lease = f.store.lease("reconciler")
    assert lease is not None
    before = contents(f.store.engine)
    with pytest.raises(BackupError, match="holds this database's reconciler lease"):
        restore(f.store.engine, saved.path, replace=True, now=f.clock.now())
    assert contents(f.store.engine) == before
    restore(f.store.engine, saved.path, replace=True, now=lease[2] + timedelta(seconds=1))  # it expired


def test_a_backup_never_overwrites_and_a_restore_takes_only_backups(tmp_path: Path) -> None:
    engine = fresh(f"sqlite:///{tmp_path / 'db.sqlite'}")
    (tmp_path / "taken").write_text("precious")
    with pytest.raises(BackupError, match="exists"):
        backup(engine, tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "precious"
    with pytest.raises(BackupError, match="not a dedicate backup"):
        restore(engine, tmp_path / "taken")
    with pytest.raises(BackupError, match="not a file"):
        restore(engine, tmp_path / "missing.db")
    with pytest.raises(BackupError, match="nothing to back up"):
        backup(make_engine(f"sqlite:///{tmp_path / 'empty.db'}"), tmp_path / "b.db")
    assert not list(tmp_path.glob("*.partial"))


def test_a_database_or_backup_from_a_newer_dedicate_is_refused_untouched(tmp_path: Path) -> None:
    engine = fresh(f"sqlite:///{tmp_path / 'db.sqlite'}")
    saved = backup(engine, tmp_path / "b.db")
    conn = sqlite3.connect(saved.path)
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    assert not Path(f"{saved.path}-wal").exists(), "a backup is one file"
    with pytest.raises(BackupError, match=r"9999.*newer dedicate"):
        restore(engine, saved.path)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaError, match=r"9999.*newer dedicate"):
        migrate(engine)
    assert schema_revision(engine) == "9999", "left as it was"


def test_an_older_backup_is_upgraded_by_the_migrations_on_restore(tmp_path: Path) -> None:
    old = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(old, "0011")
    with old.begin() as conn:
        conn.execute(text("INSERT INTO owners (name, created_at, gpu_quota) "
                          "VALUES ('alice', '2026-01-01 00:00:00.000000', 8)"))
    saved = backup(old, tmp_path / "old-backup.db")
    assert inspect(saved.path).revision == "0011"
    target = fresh(f"sqlite:///{tmp_path / 'new.db'}")
    restore(target, saved.path)
    assert schema_revision(target) == head_revision() != "0011"
    assert Store(target).owner_quota("alice") == 8


def test_sqlite_writes_are_durable_and_in_wal_mode(tmp_path: Path) -> None:
    engine = fresh(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 2, "FULL: a commit is on disk"


def test_the_cli_backs_up_and_restores_the_database_the_server_uses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    f = Billed(tmp_path / "fleet", f"sqlite:///{data / 'dedicate.db'}")  # where `dedicate up` keeps it
    f.create(ALICE, 1, 1)
    f.run(5)
    env = {"DEDICATE_DATA_DIR": str(data), "DEDICATE_CONFIG": "", "DEDICATE_DATABASE_URL": ""}
    runner = CliRunner()
    made = runner.invoke(cli, ["backup", str(tmp_path / "b.db")], env=env)
    assert made.exit_code == 0, made.output
    assert "backed up to" in made.output and "1 endpoints" in made.output
    again = runner.invoke(cli, ["backup", str(tmp_path / "b.db")], env=env)
    assert again.exit_code == 1 and "never overwrites" in again.output
    with f.store.engine.begin() as conn:  # the server has stopped: its lease ran out
        conn.execute(update(LeaseRow).values(expires_at=f.clock.now() - timedelta(days=3650)))
    refused = runner.invoke(cli, ["restore", str(tmp_path / "b.db")], env=env)
    assert refused.exit_code == 1 and "--replace" in refused.output
    done = runner.invoke(cli, ["restore", str(tmp_path / "b.db"), "--replace", "--json"], env=env)
    assert done.exit_code == 0, done.output
    assert '"restored": true' in done.output


def test_a_postgresql_database_at_another_revision_is_backed_up_by_the_dedicate_that_serves_it(
        tmp_path: Path, pg_server: str) -> None:
    old = make_engine(_new_pg_database(pg_server))
    migrate(old, "0011")
    with pytest.raises(BackupError, match="back it up with the dedicate that serves it"):
        backup(old, tmp_path / "b.db")
    assert not (tmp_path / "b.db").exists() and not list(tmp_path.glob("*.partial"))
    old.dispose()
