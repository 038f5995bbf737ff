"""Plain records the layers exchange: endpoints, replicas, keys, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Literal

from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.replicas import ReplicaFacts, ReplicaStatus, replica_status


@dataclass(frozen=True)
class Endpoint:
    id: str
    name: str
    owner: str
    model: str
    hardware: str
    display_name: str
    min_replicas: int
    max_replicas: int
    desired_replicas: int
    inactive_timeout: int | None
    disable_prompt_cache: bool
    disable_speculative_decoding: bool
    availability_zone: str | None
    cents_per_minute: Decimal
    intent: Intent
    state: EndpointState
    state_changed_at: datetime
    status_message: str
    failures_before_ready: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int
    min_queued_at: datetime | None = None
    queued_replicas: int = 0
    queue_position: int | None = None
    target_concurrency: float | None = None
    autoscale_state: str | None = None
    last_request_at: datetime | None = None
    route_id: str | None = None  # the route (v2's endpoint) this deployment belongs to
    deployment_name: str | None = None  # its name there
    scaling_rules: str | None = None  # v2's windows and rate policies (domain/scaling.py), as JSON
    max_concurrency: int | None = None  # requests a replica is sent at once at most; None: no cap

    def within_bounds(self, replicas: int) -> int:
        """``replicas`` clamped to [min_replicas, max_replicas]."""
        return min(max(replicas, self.min_replicas), self.max_replicas)

    @property
    def should_run(self) -> bool:
        """Whether replicas should run: the user wants it running, it is not deleted and not in ERROR."""
        return self.intent is Intent.RUN and self.deleted_at is None and self.state is not EndpointState.ERROR


@dataclass(frozen=True)
class Address:
    """Where a replica's engine answers, as its runtime reported it."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


# What a key may do: ``manage`` every route (and call models), ``inference`` only call models.
KeyScope = Literal["manage", "inference"]
KEY_SCOPES: tuple[KeyScope, ...] = ("manage", "inference")

Slots = tuple[int, ...]  # the slot numbers (GPU indexes on a discovered node) a replica holds on its node


@dataclass(frozen=True)
class Replica:
    id: str
    endpoint_id: str
    engine: str
    node: str | None
    slots: Slots
    token: str
    address: Address | None
    pid: int | None
    process_started: str | None
    log_path: str | None
    created_at: datetime
    facts: ReplicaFacts
    stop_reason: str | None
    version: int

    @cached_property
    def status(self) -> ReplicaStatus:
        """Its facts never change (a change is a new record), so it is worked out once: a pass asks
        it of every replica a few times."""
        return replica_status(self.facts)

    @property
    def url(self) -> str | None:
        return None if self.address is None else self.address.url


@dataclass(frozen=True)
class EndpointSignals:
    """What the gateways saw of one endpoint, summed over gateway processes."""

    endpoint_id: str
    in_flight: int
    queued: int
    requests_total: int
    errors_total: int
    tokens_in_total: int
    tokens_out_total: int
    last_request_at: datetime | None
    updated_at: datetime
    # The most requests in flight and held at once since the previous write: the busiest
    # moment between two samples, which the instantaneous counts above can miss.
    peak_load: int = 0

    @property
    def load(self) -> int:
        """The busiest moment since the previous write, never less than now."""
        return max(self.peak_load, self.in_flight + self.queued)


@dataclass(frozen=True)
class ApiKey:
    id: str
    owner: str
    prefix: str
    is_admin: bool
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    scope: KeyScope = "manage"


@dataclass(frozen=True)
class Event:
    id: int
    endpoint_id: str
    at: datetime
    kind: str
    message: str


@dataclass
class DeploymentMinute:
    """What one gateway saw of one deployment in one UTC minute: the unit of v2 analytics.

    Times are histograms over ``domain/latency.BOUNDS_MS``; ``statuses`` counts answers by HTTP status.
    """

    endpoint_id: str
    minute: datetime
    requests: int = 0
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    ttft: list[int] = field(default_factory=list)
    latency: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class OwnerModel:
    """A fine-tune an owner registered: its base (a catalog model) and the directory of its weights."""

    id: str  # ml_<uuid>
    owner: str
    name: str  # <owner>/<bare>
    base: str
    kind: str  # WEIGHTS_TYPE_DEFAULT (full weights) or WEIGHTS_TYPE_ADAPTER
    path: str
    description: str
    created_at: datetime
