"""Capacity: the hardware queue, queued replica counts, and the reconciler lease.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dedicate.store.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as b:
        b.add_column(sa.Column("min_queued_at", UTCDateTime(), nullable=True))
        b.add_column(sa.Column("queued_replicas", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("queue_position", sa.Integer(), nullable=True))
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    with op.batch_alter_table("endpoints") as b:
        b.drop_column("queue_position")
        b.drop_column("queued_replicas")
        b.drop_column("min_queued_at")
