"""Alembic environment: runs migrations on the connection handed in by db.py."""

from __future__ import annotations

from alembic import context

from dedicate.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("dedicate migrations run through dedicate.store.db.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
