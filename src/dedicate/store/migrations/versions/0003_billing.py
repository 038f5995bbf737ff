"""Billing: the ledger of ready intervals, owner budgets and their alerts.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dedicate.store.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_intervals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("replica_id", sa.String(64), sa.ForeignKey("replicas.id"), nullable=False),
        sa.Column("endpoint_id", sa.String(64), nullable=False, index=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("hardware", sa.String(100), nullable=False),
        sa.Column("cents_per_minute", sa.Numeric(18, 6), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.Column("closed_reason", sa.String(64), nullable=True),
    )
    op.create_index("ix_billing_intervals_replica_id", "billing_intervals", ["replica_id"])
    # At most one open interval per replica, enforced by the database itself.
    op.create_index("uq_billing_intervals_open", "billing_intervals", ["replica_id"], unique=True,
                    sqlite_where=sa.text("closed = 0"), postgresql_where=sa.text("closed = false"))
    with op.batch_alter_table("owners") as b:
        b.add_column(sa.Column("monthly_budget_cents", sa.Numeric(18, 2), nullable=True))
        b.add_column(sa.Column("budget_stop", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "budget_alerts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.UniqueConstraint("owner", "month", "threshold", name="uq_budget_alerts_once"),
    )


def downgrade() -> None:
    op.drop_table("budget_alerts")
    with op.batch_alter_table("owners") as b:
        b.drop_column("budget_stop")
        b.drop_column("monthly_budget_cents")
    op.drop_index("uq_billing_intervals_open", "billing_intervals")
    op.drop_table("billing_intervals")
