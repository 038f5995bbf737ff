"""Deployment minutes: what each gateway saw of each deployment per UTC minute, for v2 analytics.

Requests, failures, answers by status, tokens, and histograms of time to first byte and total
time. Rows older than a week are deleted as new ones are written.

Revision ID: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment_minutes",
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("minute", sa.DateTime(), nullable=False),
        sa.Column("gateway", sa.String(128), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("statuses", sa.Text(), nullable=False),
        sa.Column("ttft", sa.Text(), nullable=False),
        sa.Column("latency", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_id", "minute", "gateway", name="pk_deployment_minutes"),
    )
    op.create_index("ix_deployment_minutes_minute", "deployment_minutes", ["minute"])


def downgrade() -> None:
    op.drop_index("ix_deployment_minutes_minute", "deployment_minutes")
    op.drop_table("deployment_minutes")
