"""Owner models: fine-tunes of catalog models that owners registered, with where their weights are.

Revision ID: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "owner_models",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), sa.ForeignKey("owners.name", name="fk_owner_models_owner_owners"),
                  nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("base", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_owner_models"),
    )
    op.create_index("ix_owner_models_owner", "owner_models", ["owner"])
    op.create_index("uq_owner_models_live_name", "owner_models", ["name"], unique=True,
                    sqlite_where=sa.text("deleted_at IS NULL"), postgresql_where=sa.text("deleted_at IS NULL"))


def downgrade() -> None:
    op.drop_index("uq_owner_models_live_name", "owner_models")
    op.drop_index("ix_owner_models_owner", "owner_models")
    op.drop_table("owner_models")
