"""What the services answer: records of what was found, for a face to render (``api/schemas.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from dedicate.autoscaler.policy import LastDecision, Target
from dedicate.domain.hardware import Hardware
from dedicate.domain.records import Endpoint, Replica, Slots
from dedicate.domain.replicas import ReplicaStatus
from dedicate.metering.rating import PricePrediction

AVAILABLE, INSUFFICIENT, UNAVAILABLE = "available", "insufficient", "unavailable"


@dataclass(frozen=True)
class EndpointCost:
    """This calendar month's charges so far, and the burn rate at the ready count now."""

    cost_this_month_cents: Decimal
    burn_rate_cents_per_minute: Decimal


@dataclass(frozen=True)
class EndpointView:
    endpoint: Endpoint
    replicas: list[Replica]
    prediction: PricePrediction
    cost: EndpointCost | None = None
    target: Target | None = None  # the autoscaler's target concurrency per replica
    last_scaling: LastDecision | None = None  # the autoscaler's last decision, with its reason

    def count(self, *statuses: ReplicaStatus) -> int:
        return sum(1 for r in self.replicas if r.status in statuses)


@dataclass(frozen=True)
class EndpointPage:
    """One page of endpoints, oldest first; ``next_cursor`` continues after the last one."""

    endpoints: list[Endpoint]
    has_more: bool

    @property
    def next_cursor(self) -> str | None:
        return self.endpoints[-1].id if self.has_more and self.endpoints else None


@dataclass(frozen=True)
class HardwareOffer:
    hardware: Hardware
    availability: str | None  # AVAILABLE, INSUFFICIENT or UNAVAILABLE; None when no model was named


@dataclass(frozen=True)
class SlotHolder:
    replica: str
    endpoint: str  # the endpoint's name (its id if it is gone)
    slots: Slots
    status: ReplicaStatus


@dataclass(frozen=True)
class NodeReport:
    """A node and what holds its slots (stopping replicas too: they hold slots until they exit)."""

    name: str
    gpu_type: str
    slots: int
    declared: bool
    engine: str | None
    holders: list[SlotHolder]
    region: str | None = None

    @property
    def free(self) -> int:
        return self.slots - sum(len(h.slots) for h in self.holders)

    @property
    def accounted_as(self) -> str | None:
        if not self.declared:
            return None
        return f"{self.slots}x {self.gpu_type} (logical; replicas run the {self.engine} engine on this machine's CPU)"


@dataclass(frozen=True)
class QueueEntry:
    pool: str
    position: int | None  # None: surplus replicas, which wait without a position
    endpoint: Endpoint
    queued_replicas: int
    waiting_since: datetime | None

    @property
    def kind(self) -> str:
        return "minimum" if self.position else "surplus"


@dataclass(frozen=True)
class OwnerQuota:
    owner: str
    gpu_quota: int | None
    gpus_committed: int
    gpus_in_use: int


@dataclass(frozen=True)
class UsageLine:
    """One endpoint on one hardware shape over a period; ``hardware`` None: requests but no billed time."""

    endpoint_id: str
    endpoint_name: str | None
    hardware: str | None
    replica_seconds: Fraction
    cents: Decimal
    requests: int
    tokens_in: int
    tokens_out: int

    @property
    def replica_minutes(self) -> Fraction:
        return self.replica_seconds / 60


@dataclass(frozen=True)
class Usage:
    owner: str
    start: datetime
    end: datetime
    lines: list[UsageLine]
    total_cents: Decimal


@dataclass(frozen=True)
class BudgetAlert:
    month: str
    threshold: int
    at: datetime
    message: str


@dataclass(frozen=True)
class Budget:
    owner: str
    monthly_cents: Decimal | None
    stop_at_limit: bool
    month_to_date_cents: Decimal
    alerts: list[BudgetAlert]
