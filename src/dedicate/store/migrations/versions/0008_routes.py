"""Routes: every endpoint becomes a deployment of a route of its own name (v2's endpoints).

A route is the stable inference name with its visibility and traffic split; the endpoint rows
are its deployments (``endpoints.route_id``). Each endpoint recorded before this revision gets a
route with its name, owner and times, id ``ep_<its uuid>``, a split sending everything to it,
and the deployment name ``default``; a deleted endpoint's route is deleted with it. Ids,
replicas, the queue, autoscaling state, billing intervals and invoices are untouched.

Revision ID: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), sa.ForeignKey("owners.name", name="fk_routes_owner_owners"),
                  nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("visibility", sa.String(32), nullable=False),
        sa.Column("traffic_split", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_routes"),
    )
    op.create_index("ix_routes_owner_listing", "routes", ["owner", "created_at", "id"])
    op.create_index("uq_routes_live_name", "routes", ["name"], unique=True,
                    sqlite_where=sa.text("deleted_at IS NULL"), postgresql_where=sa.text("deleted_at IS NULL"))
    # Plain ADD COLUMN, not a batch: SQLite would rebuild the table, and replicas reference it.
    # SQLite takes the reference inline (it cannot ALTER a constraint in); PostgreSQL, as a constraint.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE endpoints ADD COLUMN route_id VARCHAR(64) "
                   "CONSTRAINT fk_endpoints_route_id_routes REFERENCES routes (id)")
    else:
        op.add_column("endpoints", sa.Column("route_id", sa.String(64), nullable=True))
        op.create_foreign_key("fk_endpoints_route_id_routes", "endpoints", "routes", ["route_id"], ["id"])
    op.add_column("endpoints", sa.Column("deployment_name", sa.String(100), nullable=True))
    op.create_index("ix_endpoints_route_id", "endpoints", ["route_id"])
    # 'endpoint-<uuid>' -> 'ep_<uuid>': the prefix is 9 characters. The split is JSON of [record id, weight].
    op.execute(
        "INSERT INTO routes (id, owner, name, visibility, traffic_split, version, created_at, updated_at, "
        "deleted_at) SELECT 'ep_' || substr(id, 10), owner, name, 'VISIBILITY_PRIVATE', "
        "'[[\"' || id || '\", 1.0]]', 1, created_at, updated_at, deleted_at FROM endpoints")
    op.execute("UPDATE endpoints SET route_id = 'ep_' || substr(id, 10), deployment_name = 'default'")


def downgrade() -> None:
    op.drop_index("ix_endpoints_route_id", "endpoints")
    op.drop_column("endpoints", "deployment_name")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_endpoints_route_id_routes", "endpoints", type_="foreignkey")
    op.drop_column("endpoints", "route_id")
    op.drop_index("uq_routes_live_name", "routes")
    op.drop_index("ix_routes_owner_listing", "routes")
    op.drop_table("routes")
