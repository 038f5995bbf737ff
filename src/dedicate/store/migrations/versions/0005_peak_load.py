"""Signals: the busiest moment between two writes of a gateway.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint_signals") as b:
        b.add_column(sa.Column("peak_load", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("endpoint_signals") as b:
        b.drop_column("peak_load")
