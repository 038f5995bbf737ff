"""Initial schema: owners, keys, endpoints, replicas, events.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dedicate.store.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "owners",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("gpu_quota", sa.Integer(), nullable=True),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(64), sa.ForeignKey("owners.name"), nullable=False, index=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "endpoints",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), sa.ForeignKey("owners.name"), nullable=False, index=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("hardware", sa.String(100), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("min_replicas", sa.Integer(), nullable=False),
        sa.Column("max_replicas", sa.Integer(), nullable=False),
        sa.Column("desired_replicas", sa.Integer(), nullable=False),
        sa.Column("inactive_timeout", sa.Integer(), nullable=True),
        sa.Column("disable_prompt_cache", sa.Boolean(), nullable=False),
        sa.Column("disable_speculative_decoding", sa.Boolean(), nullable=False),
        sa.Column("availability_zone", sa.String(100), nullable=True),
        sa.Column("cents_per_minute", sa.Numeric(18, 6), nullable=False),
        sa.Column("intent", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_changed_at", UTCDateTime(), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("failures_before_ready", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("endpoint_id", sa.String(64), sa.ForeignKey("endpoints.id"), nullable=False,
                  index=True),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("node", sa.String(200), nullable=True),
        sa.Column("slots", sa.String(200), nullable=False),
        sa.Column("token", sa.String(128), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("process_started", sa.String(64), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("placed_at", UTCDateTime(), nullable=True),
        sa.Column("launched_at", UTCDateTime(), nullable=True),
        sa.Column("first_ready_at", UTCDateTime(), nullable=True),
        sa.Column("last_probe_ok_at", UTCDateTime(), nullable=True),
        sa.Column("probe_failures", sa.Integer(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("stop_requested_at", UTCDateTime(), nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("stopped_at", UTCDateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_replicas_live", "replicas", ["stopped_at"])
    op.create_table(
        "endpoint_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(64), sa.ForeignKey("endpoints.id"), nullable=False,
                  index=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for table in ("endpoint_events", "replicas", "endpoints", "api_keys", "owners"):
        op.drop_table(table)
