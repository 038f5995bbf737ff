"""SQLAlchemy tables. Rows are converted to domain objects in repos.py.

Times are stored as naive UTC and read back as aware UTC (``UTCDateTime``),
so SQLite and PostgreSQL give the same values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use the injected UTC clock")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class OwnerRow(Base):
    __tablename__ = "owners"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    gpu_quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_budget_cents: Mapped[Any] = mapped_column(Numeric(18, 2), nullable=True)
    budget_stop: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("owners.name"), index=True)
    prefix: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    scope: Mapped[str] = mapped_column(String(16), default="manage", server_default="manage")
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RouteRow(Base):
    """A stable inference name over deployments (v2's endpoint): its visibility and traffic split."""

    __tablename__ = "routes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("owners.name"))
    name: Mapped[str] = mapped_column(String(200))  # <owner>/<bare>, unique among the live ones
    visibility: Mapped[str] = mapped_column(String(32))
    traffic_split: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[record id, weight], ...]
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        Index("ix_routes_owner_listing", "owner", "created_at", "id"),
        Index("uq_routes_live_name", "name", unique=True,
              sqlite_where=text("deleted_at IS NULL"), postgresql_where=text("deleted_at IS NULL")),
    )


class EndpointRow(Base):
    __tablename__ = "endpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    owner: Mapped[str] = mapped_column(ForeignKey("owners.name"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    hardware: Mapped[str] = mapped_column(String(100))
    display_name: Mapped[str] = mapped_column(String(200))
    min_replicas: Mapped[int] = mapped_column(Integer)
    max_replicas: Mapped[int] = mapped_column(Integer)
    desired_replicas: Mapped[int] = mapped_column(Integer)
    inactive_timeout: Mapped[int | None] = mapped_column(Integer, nullable=True)
    disable_prompt_cache: Mapped[bool] = mapped_column(Boolean, default=False)
    disable_speculative_decoding: Mapped[bool] = mapped_column(Boolean, default=False)
    availability_zone: Mapped[str | None] = mapped_column(String(100), nullable=True)
    cents_per_minute: Mapped[Any] = mapped_column(Numeric(18, 6))
    intent: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)  # ix_endpoints_state: a pass reads the active
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_message: Mapped[str] = mapped_column(Text, default="")
    failures_before_ready: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # The hardware queue: when this endpoint's missing minimum replicas joined the queue
    # (None: nothing queued, or a lost replica being replaced, which outranks the queue).
    min_queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    queued_replicas: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queue_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Autoscaling: the user's target concurrency per replica (None: the default), the policy's
    # persisted state (JSON), and the last request any gateway saw (for the idle timeout).
    target_concurrency: Mapped[float | None] = mapped_column(Float, nullable=True)
    autoscale_state: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_request_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The route (v2's endpoint) this deployment belongs to, and its name there.
    route_id: Mapped[str | None] = mapped_column(ForeignKey("routes.id"), nullable=True, index=True)
    deployment_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    scaling_rules: Mapped[str | None] = mapped_column(Text, nullable=True)  # domain/scaling.py, as JSON
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)  # per replica; None: no cap

    # GET /v1/endpoints pages in (created_at, id) order, an owner's or everyone's: from an index, a
    # page costs its own rows, not a sort of every endpoint ever made
    __table_args__ = (Index("ix_endpoints_listing", "created_at", "id"),
                      Index("ix_endpoints_owner_listing", "owner", "created_at", "id"))


class LeaseRow(Base):
    """Who may act as the reconciler; ``token`` grows with every change of holder (fencing)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    token: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReplicaRow(Base):
    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("endpoints.id"), index=True)
    engine: Mapped[str] = mapped_column(String(32))
    node: Mapped[str | None] = mapped_column(String(200), nullable=True)
    slots: Mapped[str] = mapped_column(String(200), default="")
    token: Mapped[str] = mapped_column(String(128))
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)  # as the runtime reported it
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    process_started: Mapped[str | None] = mapped_column(String(64), nullable=True)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    launched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    first_ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_probe_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    probe_failures: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stop_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_replicas_live", "stopped_at"),)


class IntervalRow(Base):
    """One span during which a replica was seen ready: the unit of billing."""

    __tablename__ = "billing_intervals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    replica_id: Mapped[str] = mapped_column(ForeignKey("replicas.id"), index=True)
    endpoint_id: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    hardware: Mapped[str] = mapped_column(String(100))
    cents_per_minute: Mapped[Any] = mapped_column(Numeric(18, 6))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    closed_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index("uq_billing_intervals_open", "replica_id", unique=True,
              sqlite_where=text("closed = 0"), postgresql_where=text("closed = false")),
    )


class AlertRow(Base):
    __tablename__ = "budget_alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    month: Mapped[str] = mapped_column(String(7))
    threshold: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    message: Mapped[str] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("owner", "month", "threshold", name="uq_budget_alerts_once"),)


class SignalRow(Base):
    """What one gateway process sees of one endpoint, written every few seconds."""

    __tablename__ = "endpoint_signals"
    endpoint_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gateway: Mapped[str] = mapped_column(String(128), primary_key=True)
    in_flight: Mapped[int] = mapped_column(Integer)
    queued: Mapped[int] = mapped_column(Integer)
    requests_total: Mapped[int] = mapped_column(Integer)
    errors_total: Mapped[int] = mapped_column(Integer)
    tokens_in_total: Mapped[int] = mapped_column(Integer)
    tokens_out_total: Mapped[int] = mapped_column(Integer)
    last_request_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    peak_load: Mapped[int] = mapped_column(Integer, default=0)


class TokenUsageRow(Base):
    __tablename__ = "token_usage"
    endpoint_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    requests: Mapped[int] = mapped_column(Integer)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)


class EventRow(Base):
    __tablename__ = "endpoint_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("endpoints.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class DeploymentMinuteRow(Base):
    """One gateway's minute of one deployment (``records.DeploymentMinute``), kept ``MINUTES_KEPT_DAYS``."""

    __tablename__ = "deployment_minutes"
    endpoint_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    gateway: Mapped[str] = mapped_column(String(128), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    statuses: Mapped[str] = mapped_column(Text)  # JSON {"200": n, ...}
    ttft: Mapped[str] = mapped_column(Text)  # JSON bucket counts over domain/latency.BOUNDS_MS
    latency: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_deployment_minutes_minute", "minute"),)


class OwnerModelRow(Base):
    """A model an owner registered: a fine-tune of a catalog model, from a directory of weights."""

    __tablename__ = "owner_models"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ml_<uuid>
    owner: Mapped[str] = mapped_column(ForeignKey("owners.name"), index=True)
    name: Mapped[str] = mapped_column(String(200))  # <owner>/<bare>, unique among the live ones
    base: Mapped[str] = mapped_column(String(200))  # the catalog model it was trained from
    kind: Mapped[str] = mapped_column(String(32))  # WEIGHTS_TYPE_DEFAULT or WEIGHTS_TYPE_ADAPTER
    path: Mapped[str] = mapped_column(Text)  # the directory of its weights
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        Index("uq_owner_models_live_name", "name", unique=True,
              sqlite_where=text("deleted_at IS NULL"), postgresql_where=text("deleted_at IS NULL")),
    )
