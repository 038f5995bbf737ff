"""Signals: what each gateway process sees per endpoint, token usage per day, autoscaler state.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dedicate.store.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoint_signals",
        sa.Column("endpoint_id", sa.String(64), primary_key=True),
        sa.Column("gateway", sa.String(128), primary_key=True),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("requests_total", sa.Integer(), nullable=False),
        sa.Column("errors_total", sa.Integer(), nullable=False),
        sa.Column("tokens_in_total", sa.Integer(), nullable=False),
        sa.Column("tokens_out_total", sa.Integer(), nullable=False),
        sa.Column("last_request_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "token_usage",
        sa.Column("endpoint_id", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
    )
    with op.batch_alter_table("endpoints") as b:
        b.add_column(sa.Column("target_concurrency", sa.Float(), nullable=True))
        b.add_column(sa.Column("autoscale_state", sa.Text(), nullable=True))
        b.add_column(sa.Column("last_request_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as b:
        b.drop_column("last_request_at")
        b.drop_column("autoscale_state")
        b.drop_column("target_concurrency")
    op.drop_table("token_usage")
    op.drop_table("endpoint_signals")
