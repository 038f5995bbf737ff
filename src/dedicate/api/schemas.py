"""API objects: how the services' records look on the wire (Together's flat v1 shapes), as response models.

Each model renders exactly the JSON the routes answered when they built dicts by hand (the
snapshot in ``tests/api`` holds them to it): field order, ``null`` where a value is unknown, and
a field left out (``exclude_if``) where Together's objects leave it out. Times end in ``Z``, except
in the billing answers and the queue's ``waiting_since`` (``+00:00``); amounts of cents are
decimal strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from dedicate.control.auth import Principal
from dedicate.control.views import (
    Budget,
    EndpointPage,
    EndpointView,
    HardwareOffer,
    NodeReport,
    OwnerQuota,
    QueueEntry,
    Usage,
)
from dedicate.domain.capacity import GB, memory_needed_bytes
from dedicate.domain.catalog import Catalog
from dedicate.domain.endpoints import EndpointState
from dedicate.domain.models import ModelSpec
from dedicate.domain.projects import Organization as DomainOrganization
from dedicate.domain.projects import Project as DomainProject
from dedicate.domain.records import ApiKey, Endpoint, Event, Replica
from dedicate.domain.replicas import ReplicaStatus
from dedicate.domain.status import replica_counts
from dedicate.metering.ledger import fmt_fraction


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


Time = Annotated[datetime, PlainSerializer(_iso, return_type=str),
                 WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-27T03:45:52.954291Z"]})]
OffsetTime = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str),
                       WithJsonSchema({"type": "string", "format": "date-time",
                                       "examples": ["2026-11-01T00:00:00+00:00"]})]
Cents = Annotated[Decimal, PlainSerializer(str, return_type=str),
                  WithJsonSchema({"type": "string", "description": "a decimal number of cents", "examples": ["8"]})]


def _absent(value: object) -> bool:
    return value is None


def Optional(description: str) -> Any:
    """A field that is left out of the object, not null, when it has no value."""
    return Field(None, exclude_if=_absent, description=description)


class Wire(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)


# endpoints -------------------------------------------------------------------------------------------

class ListEndpoint(Wire):
    """An entry of ``GET /v1/endpoints``. ``name`` is what inference requests pass as ``model``."""

    object: Literal["endpoint"] = "endpoint"
    id: str
    name: str
    model: str
    type: Literal["dedicated"] = "dedicated"
    owner: str
    state: EndpointState
    created_at: Time

    @classmethod
    def entry(cls, ep: Endpoint) -> ListEndpoint:
        return cls(id=ep.id, name=ep.name, model=ep.model, owner=ep.owner, state=ep.state, created_at=ep.created_at)


class EndpointList(Wire):
    object: Literal["list"] = "list"
    data: list[ListEndpoint]
    has_more: bool = Field(description="more endpoints follow: ask again with after=next_cursor")
    next_cursor: str | None = Field(description="the id to pass as `after` for the next page; null on the last")

    @classmethod
    def of(cls, page: EndpointPage) -> EndpointList:
        return cls(data=[ListEndpoint.entry(e) for e in page.endpoints], has_more=page.has_more,
                   next_cursor=page.next_cursor)


class AutoscalingOut(Wire):
    min_replicas: int
    max_replicas: int
    target_concurrency: float | None = Optional("only where the user set one")


class TargetOut(Wire):
    value: float
    source: Literal["user", "default"]
    basis: str = Field(description="how a default was derived, in words")


class DecisionOut(Wire):
    at: Time
    from_: int = Field(serialization_alias="from")
    to: int
    reason: str


class AutoscalerOut(Wire):
    target_concurrency: TargetOut | None = Field(description="the target in use")
    last_decision: DecisionOut | None = Field(description="the autoscaler's last change, with its reason")


class ReplicaCounts(Wire):
    desired: int = Field(description="0 while the endpoint is STOPPING, STOPPED or in ERROR: nothing should run")
    ready: int
    starting: int
    queued: int = Field(description="replicas waiting for hardware")
    stopping: int


class Pricing(Wire):
    cents_per_replica_minute: float
    min_replicas: int
    max_replicas: int
    cents_per_hour_at_min: float
    cents_per_hour_at_max: float
    dollars_per_hour_at_min: float
    dollars_per_hour_at_max: float


class BillingOut(Wire):
    cost_this_month_cents: Cents
    burn_rate_cents_per_minute: Cents


class DedicatedEndpoint(ListEndpoint):
    """The endpoint object: what GET, PATCH, POST, start, stop and scale answer."""

    display_name: str
    hardware: str
    autoscaling: AutoscalingOut
    autoscaler: AutoscalerOut
    inactive_timeout: int | None = Field(description="minutes idle before the endpoint stops; null: never")
    disable_prompt_cache: bool
    disable_speculative_decoding: bool
    availability_zone: str | None
    status_message: str
    state_changed_at: Time
    replicas: ReplicaCounts
    queue_position: int | None = Field(description="its place in its pool's queue while its minimum waits")
    pricing: Pricing
    billing: BillingOut | None = Optional("this calendar month's cost and the burn rate now; not on a create")
    dry_run: Literal[True] | None = Optional("only on `?dry_run=true`: nothing was stored")

    @classmethod
    def of(cls, v: EndpointView, *, dry_run: bool = False) -> DedicatedEndpoint:
        ep = v.endpoint
        last = v.last_scaling
        counts = replica_counts(ep, v.replicas, ep.queued_replicas)
        return cls(
            id=ep.id, name=ep.name, model=ep.model, owner=ep.owner, state=ep.state, created_at=ep.created_at,
            display_name=ep.display_name, hardware=ep.hardware,
            autoscaling=AutoscalingOut(min_replicas=ep.min_replicas, max_replicas=ep.max_replicas,
                                       target_concurrency=ep.target_concurrency),
            autoscaler=AutoscalerOut(
                target_concurrency=None if v.target is None else TargetOut.model_validate(v.target.as_dict()),
                last_decision=None if last is None else DecisionOut(
                    at=datetime.fromtimestamp(last.at, UTC), from_=last.before, to=last.after, reason=last.why)),
            inactive_timeout=ep.inactive_timeout, disable_prompt_cache=ep.disable_prompt_cache,
            disable_speculative_decoding=ep.disable_speculative_decoding, availability_zone=ep.availability_zone,
            status_message=ep.status_message, state_changed_at=ep.state_changed_at,
            replicas=ReplicaCounts(  # counted as the reconciler and the autoscaler count (domain/status.py)
                desired=counts.desired, ready=counts.ready, starting=counts.starting, queued=counts.queued,
                stopping=counts.stopping),
            queue_position=ep.queue_position,
            pricing=Pricing.model_validate(v.prediction.as_dict()),
            billing=None if v.cost is None else BillingOut(
                cost_this_month_cents=v.cost.cost_this_month_cents,
                burn_rate_cents_per_minute=v.cost.burn_rate_cents_per_minute),
            dry_run=True if dry_run else None,
        )


class ReplicaOut(Wire):
    object: Literal["replica"] = "replica"
    id: str
    status: ReplicaStatus = Field(description="derived from the recorded times (docs/architecture.md)")
    engine: str
    node: str | None
    slots: list[int]
    placed_at: Time | None
    launched_at: Time | None
    first_ready_at: Time | None
    last_probe_ok_at: Time | None
    stop_requested_at: Time | None
    stop_reason: str | None
    stopped_at: Time | None
    exit_code: int | None

    @classmethod
    def of(cls, r: Replica) -> ReplicaOut:
        f = r.facts
        return cls(id=r.id, status=r.status, engine=r.engine, node=r.node, slots=list(r.slots),
                   placed_at=f.placed_at, launched_at=f.launched_at, first_ready_at=f.first_ready_at,
                   last_probe_ok_at=f.last_probe_ok_at, stop_requested_at=f.stop_requested_at,
                   stop_reason=r.stop_reason, stopped_at=f.stopped_at, exit_code=f.exit_code)


class ReplicaList(Wire):
    object: Literal["list"] = "list"
    data: list[ReplicaOut]


class EventOut(Wire):
    object: Literal["event"] = "event"
    id: int
    at: Time
    kind: str = Field(description="created, updated, state, queued, placed, launched, ready, scaled, ... "
                                  "(docs/api.md)")
    message: str

    @classmethod
    def of(cls, e: Event) -> EventOut:
        return cls(id=e.id, at=e.at, kind=e.kind, message=e.message)


class EventList(Wire):
    object: Literal["list"] = "list"
    data: list[EventOut]


# hardware, zones, the catalog ---------------------------------------------------------------------------

class HardwarePricing(Wire):
    cents_per_minute: float = Field(description="per replica")


class HardwareSpecs(Wire):
    gpu_type: str
    gpu_link: str
    gpu_memory: int = Field(description="GB")
    gpu_count: int


class Availability(Wire):
    status: Literal["available", "insufficient", "unavailable"]


class Hardware(Wire):
    object: Literal["hardware"] = "hardware"
    id: str = Field(examples=["1x_nvidia_h100_80gb_sxm"])
    pricing: HardwarePricing
    specs: HardwareSpecs
    updated_at: Time
    availability: Availability | None = Optional("only when ?model= is given")

    @classmethod
    def of(cls, offer: HardwareOffer, updated_at: datetime) -> Hardware:
        h = offer.hardware
        return cls(id=h.id, pricing=HardwarePricing(cents_per_minute=float(h.cents_per_minute)),
                   specs=HardwareSpecs(gpu_type=h.gpu_type, gpu_link=h.gpu_link, gpu_memory=h.gpu_memory_gb,
                                       gpu_count=h.gpu_count),
                   updated_at=updated_at,
                   availability=None if offer.availability is None else Availability.model_validate(
                       {"status": offer.availability}))


class HardwareList(Wire):
    object: Literal["list"] = "list"
    data: list[Hardware]


class Zones(Wire):
    avzones: list[str]


class CatalogModel(Wire):
    object: Literal["model"] = "model"
    id: str
    family: str
    parameters_b: float
    context_length: int
    dtype: str
    engines: list[str]
    deployable: bool = Field(description="one of its engines is available on this installation")
    memory_needed_gb: float

    @classmethod
    def of(cls, m: ModelSpec, *, deployable: bool, memory_needed_gb: float) -> CatalogModel:
        return cls(id=m.name, family=m.family, parameters_b=m.params_b, context_length=m.context_length,
                   dtype=m.dtype, engines=list(m.engines), deployable=deployable, memory_needed_gb=memory_needed_gb)


class CatalogList(Wire):
    object: Literal["list"] = "list"
    data: list[CatalogModel]

    @classmethod
    def of(cls, catalog: Catalog) -> CatalogList:
        """Every model of ``catalog`` by name, with whether it can run here and the memory it needs."""
        return cls(data=[CatalogModel.of(m, deployable=any(e in catalog.engines for e in m.engines),
                                         memory_needed_gb=round(memory_needed_bytes(m) / GB, 2))
                         for m in sorted(catalog.models.values(), key=lambda m: m.name)])


# keys, owners, identity ----------------------------------------------------------------------------------

class ApiKeyOut(Wire):
    object: Literal["api_key"] = "api_key"
    id: str
    owner: str
    prefix: str
    name: str | None
    admin: bool
    scope: Literal["manage", "inference"] = Field(description="manage: every route; inference: only calls to models")
    created_at: Time
    revoked_at: Time | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(id=key.id, owner=key.owner, prefix=key.prefix, name=key.name, admin=key.is_admin,
                   scope=key.scope, created_at=key.created_at, revoked_at=key.revoked_at)


class NewApiKey(ApiKeyOut):
    key: str = Field(description="the secret: shown only here")

    @classmethod
    def made(cls, key: ApiKey, secret: str) -> NewApiKey:
        return cls(**ApiKeyOut.of(key).model_dump(), key=secret)


class KeyList(Wire):
    object: Literal["list"] = "list"
    data: list[ApiKeyOut]


class OwnerOut(Wire):
    object: Literal["owner"] = "owner"
    owner: str
    gpu_quota: int | None = Field(description="null: no cap")
    gpus_committed: int = Field(description="min_replicas × GPUs of the owner's GPU endpoints meant to run")
    gpus_in_use: int

    @classmethod
    def of(cls, q: OwnerQuota) -> OwnerOut:
        return cls(owner=q.owner, gpu_quota=q.gpu_quota, gpus_committed=q.gpus_committed, gpus_in_use=q.gpus_in_use)


class KeyRef(Wire):
    id: str


class Organization(Wire):
    id: str
    name: str


class ProjectRef(Wire):
    id: str
    name: str
    slug: str


class WhoAmI(Wire):
    """The key, its project (the owner: ``proj_<owner>``, slug = the owner) and the organization (the installation)."""

    type: Literal["project_api_key"] = "project_api_key"
    api_key: KeyRef
    organization: Organization
    project: ProjectRef
    admin: bool

    @classmethod
    def of(cls, p: Principal, org: DomainOrganization) -> WhoAmI:
        project = DomainProject.of(p.owner)
        return cls(api_key=KeyRef(id=p.key_id), organization=Organization(id=org.id, name=org.name),
                   project=ProjectRef(id=project.id, name=project.name, slug=project.slug), admin=p.is_admin)


class ProjectOut(Wire):
    """An item of GET /v1/projects: snake_case, as `tg projects list` reads it."""

    id: str
    name: str
    slug: str
    organization_id: str
    organization_name: str

    @classmethod
    def of(cls, p: DomainProject, org: DomainOrganization) -> ProjectOut:
        return cls(id=p.id, name=p.name, slug=p.slug, organization_id=org.id, organization_name=org.name)


class ProjectPage(Wire):
    object: Literal["list"] = "list"
    data: list[ProjectOut]
    next_cursor: str | None


# operators: nodes and the queue --------------------------------------------------------------------------

class SlotHolderOut(Wire):
    replica: str
    endpoint: str
    slots: list[int]
    status: ReplicaStatus


class NodeOut(Wire):
    object: Literal["node"] = "node"
    name: str
    gpu_type: str
    slots: int
    free: int
    declared: bool = Field(description="a [[nodes]] entry of the config")
    engine: str | None
    accounted_as: str | None
    region: str | None = Field(None, description="the region the runtime says the node is in (a Ray label)")
    replicas: list[SlotHolderOut]

    @classmethod
    def of(cls, n: NodeReport) -> NodeOut:
        return cls(name=n.name, gpu_type=n.gpu_type, slots=n.slots, free=n.free, declared=n.declared,
                   engine=n.engine, accounted_as=n.accounted_as, region=n.region,
                   replicas=[SlotHolderOut(replica=h.replica, endpoint=h.endpoint, slots=list(h.slots),
                                           status=h.status) for h in n.holders])


class NodeList(Wire):
    object: Literal["list"] = "list"
    data: list[NodeOut]


class QueueEntryOut(Wire):
    object: Literal["queue_entry"] = "queue_entry"
    pool: str
    position: int | None
    endpoint: str
    name: str
    owner: str
    hardware: str
    queued_replicas: int
    waiting_since: OffsetTime | None
    kind: Literal["minimum", "surplus"]
    message: str

    @classmethod
    def of(cls, q: QueueEntry) -> QueueEntryOut:
        e = q.endpoint
        return cls(pool=q.pool, position=q.position, endpoint=e.id, name=e.name, owner=e.owner, hardware=e.hardware,
                   queued_replicas=q.queued_replicas, waiting_since=q.waiting_since,
                   kind="minimum" if q.kind == "minimum" else "surplus", message=e.status_message)


class QueueList(Wire):
    object: Literal["list"] = "list"
    data: list[QueueEntryOut]


# billing ------------------------------------------------------------------------------------------------

class UsageLineOut(Wire):
    object: Literal["usage"] = "usage"
    endpoint: str
    endpoint_name: str | None
    hardware: str | None = Field(description="null: requests but no billed time")
    replica_seconds: str
    replica_minutes: str
    cents: Cents
    requests: int
    tokens_in: int
    tokens_out: int


class UsageOut(Wire):
    object: Literal["list"] = "list"
    owner: str
    start: OffsetTime
    end: OffsetTime
    data: list[UsageLineOut]
    total_cents: Cents

    @classmethod
    def of(cls, u: Usage) -> UsageOut:
        return cls(owner=u.owner, start=u.start, end=u.end, total_cents=u.total_cents, data=[
            UsageLineOut(endpoint=x.endpoint_id, endpoint_name=x.endpoint_name, hardware=x.hardware,
                         replica_seconds=fmt_fraction(x.replica_seconds),
                         replica_minutes=fmt_fraction(x.replica_minutes),
                         cents=x.cents, requests=x.requests, tokens_in=x.tokens_in, tokens_out=x.tokens_out)
            for x in u.lines])


class InvoiceLine(Wire):
    cents: str
    endpoint: str
    endpoint_name: str
    hardware: str
    replica_minutes: str
    replica_seconds: str


class Invoice(Wire):
    """Canonical JSON (sorted keys, no spaces), recomputed from the ledger on every call."""

    lines: list[InvoiceLine]
    month: str
    object: Literal["invoice"] = "invoice"
    owner: str
    period_end: str
    period_start: str
    total_cents: str


class AlertOut(Wire):
    month: str
    threshold: int = Field(description="percent of the budget: 80 or 100")
    at: OffsetTime
    message: str


class BudgetOut(Wire):
    object: Literal["budget"] = "budget"
    owner: str
    monthly_cents: Cents | None
    stop_at_limit: bool
    month_to_date_cents: Cents
    alerts: list[AlertOut]

    @classmethod
    def of(cls, b: Budget) -> BudgetOut:
        return cls(owner=b.owner, monthly_cents=b.monthly_cents, stop_at_limit=b.stop_at_limit,
                   month_to_date_cents=b.month_to_date_cents,
                   alerts=[AlertOut(month=a.month, threshold=a.threshold, at=a.at, message=a.message)
                           for a in b.alerts])


class Health(Wire):
    status: Literal["ok"] = "ok"
