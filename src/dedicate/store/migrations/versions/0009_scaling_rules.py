"""Endpoints: the scaling rules of v2 (windows, the metric's target, rate policies), as JSON.

Null for every endpoint recorded before: the installation's defaults, as before.

Revision ID: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("scaling_rules", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("endpoints", "scaling_rules")
