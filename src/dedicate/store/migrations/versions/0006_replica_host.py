"""Replicas: the host their runtime reported, beside the port; endpoints indexed by state.

Replicas recorded before this revision ran as local child processes, reached on
127.0.0.1: that is written as their host. A reconcile pass reads only endpoints
that are not STOPPED, through the index on their state.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas") as b:
        b.add_column(sa.Column("host", sa.String(255), nullable=True))
    op.execute("UPDATE replicas SET host = '127.0.0.1' WHERE port IS NOT NULL")
    op.create_index("ix_endpoints_state", "endpoints", ["state"])


def downgrade() -> None:
    op.drop_index("ix_endpoints_state", "endpoints")
    with op.batch_alter_table("replicas") as b:
        b.drop_column("host")
