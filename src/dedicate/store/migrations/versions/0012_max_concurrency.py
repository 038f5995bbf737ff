"""Endpoints: the most requests the gateway sends one replica at once (v2's
maxConcurrentRequestsPerReplica); null, as for every endpoint before, is no cap.

Revision ID: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("max_concurrency", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("endpoints", "max_concurrency")
