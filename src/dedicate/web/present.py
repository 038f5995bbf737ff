"""What the console shows of the API's answers: pure functions from wire objects to rows and words.

Every figure on a page comes from the same wire object the REST API answers (``DedicatedEndpoint``
and friends), so the console and a client never disagree; this module only arranges and words them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from dedicate.api.schemas import DedicatedEndpoint, Hardware

DEPLOYING = ("PENDING", "STARTING")


def money(cents: Decimal | float | str | None) -> str:
    """Cents as dollars, to the cent ("$0.42"); under a cent but above 0 shows as "<$0.01"."""
    if cents is None:
        return "—"
    c = Decimal(str(cents))
    if 0 < c < 1:
        return "<$0.01"
    return "$" + format((c / 100).quantize(Decimal("0.01"), ROUND_HALF_UP), ",")


def rate(cents_per_minute: Decimal | float | str) -> str:
    """A price per minute in cents, with the hour beside it: "0.50¢/min · $0.30/h"."""
    c = Decimal(str(cents_per_minute))
    return f"{c.normalize():f}¢/min · {money(c * 60)}/h"


def tone(state: str) -> str:
    """A state's colour class: ok (serving), busy (on its way), off (stopped), bad (failed)."""
    if state == "STARTED":
        return "ok"
    if state in ("PENDING", "STARTING", "STOPPING"):
        return "busy"
    if state == "ERROR":
        return "bad"
    return "off"


def shutdown_words(minutes: int | None) -> str:
    return "never" if not minutes else f"after {minutes} min idle"


@dataclass(frozen=True)
class DeploymentRow:
    id: str  # the v1 endpoint id: what the API's start, stop, PATCH and DELETE take
    name: str  # the deployment's name within its endpoint
    display_name: str
    model: str
    hardware: str
    state: str
    status_message: str
    queue_position: int | None
    share: float | None  # its share of the endpoint's requests now; None for an endpoint of one deployment
    ready: int
    desired: int
    min_replicas: int
    max_replicas: int
    cost_cents: Decimal
    burn_cents_per_minute: Decimal
    inactive_timeout: int | None
    cents_per_hour_at_min: Decimal
    cents_per_hour_at_max: Decimal

    @property
    def deploying(self) -> bool:
        """On its way up: what the red stop button cancels."""
        return self.state in DEPLOYING and self.desired > 0

    @property
    def can_stop(self) -> bool:
        return self.state not in ("STOPPED", "STOPPING")

    @property
    def can_start(self) -> bool:
        return self.state in ("STOPPED", "ERROR")

    @property
    def tone(self) -> str:
        return tone(self.state)

    @property
    def summary(self) -> str:
        """The one line a person reads first: the position in the queue, the replicas short, or the state."""
        if self.queue_position is not None and self.state in DEPLOYING:
            return f"queued: position {self.queue_position}"
        if self.state == "STARTED" and self.desired == 0:
            return "scaled to zero"
        return self.status_message or self.state.lower()


@dataclass(frozen=True)
class EndpointRow:
    id: str  # the v2 endpoint (route) id
    name: str  # what requests send as `model`
    deployments: list[DeploymentRow]

    @property
    def cost_cents(self) -> Decimal:
        return sum((d.cost_cents for d in self.deployments), Decimal(0))

    @property
    def burn_cents_per_minute(self) -> Decimal:
        return sum((d.burn_cents_per_minute for d in self.deployments), Decimal(0))


def deployment_row(ep: DedicatedEndpoint, deployment_name: str, share: float | None) -> DeploymentRow:
    billing = ep.billing
    return DeploymentRow(
        id=ep.id, name=deployment_name, display_name=ep.display_name, model=ep.model, hardware=ep.hardware,
        state=ep.state.value, status_message=ep.status_message, queue_position=ep.queue_position, share=share,
        ready=ep.replicas.ready, desired=ep.replicas.desired, min_replicas=ep.autoscaling.min_replicas,
        max_replicas=ep.autoscaling.max_replicas,
        cost_cents=billing.cost_this_month_cents if billing is not None else Decimal(0),
        burn_cents_per_minute=billing.burn_rate_cents_per_minute if billing is not None else Decimal(0),
        inactive_timeout=ep.inactive_timeout,
        cents_per_hour_at_min=Decimal(str(ep.pricing.cents_per_hour_at_min)),
        cents_per_hour_at_max=Decimal(str(ep.pricing.cents_per_hour_at_max)))


def endpoint_row(route_id: str, name: str, members: Sequence[tuple[str, DedicatedEndpoint]],
                 shares: Mapping[str, float]) -> EndpointRow:
    """``members``: (deployment name, its v1 wire object); ``shares`` by v1 endpoint id."""
    several = len(members) > 1
    return EndpointRow(route_id, name, [deployment_row(ep, dep, shares.get(ep.id, 0.0) if several else None)
                                        for dep, ep in members])


def percent(share: float | None) -> str:
    return "" if share is None else f"{round(share * 100)}%"


@dataclass(frozen=True)
class Shape:
    """A hardware shape as the deploy form and the price list show it."""

    id: str
    gpu_type: str
    gpu_count: int
    cents_per_minute: Decimal
    availability: str | None  # available, insufficient or unavailable; None: not asked for a model

    @property
    def price(self) -> str:
        return rate(self.cents_per_minute)


def shape(h: Hardware, availability: str | None = None) -> Shape:
    status = h.availability.status if h.availability is not None else availability
    return Shape(h.id, h.specs.gpu_type, h.specs.gpu_count, Decimal(str(h.pricing.cents_per_minute)), status)
