"""Endpoints indexed in the order GET /v1/endpoints pages them: (created_at, id), and per owner.

Without them a page of 100 sorted every endpoint of the installation first (1.3 ms at 2,000 on
SQLite, growing with every endpoint ever made).

Revision ID: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_endpoints_listing", "endpoints", ["created_at", "id"])
    op.create_index("ix_endpoints_owner_listing", "endpoints", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_endpoints_owner_listing", "endpoints")
    op.drop_index("ix_endpoints_listing", "endpoints")
