"""v2 endpoints, their deployments and events on the wire (camelCase; see ``schemas_v2.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dedicate.api.schemas import Cents, Time
from dedicate.api.schemas_v2 import V2, Page
from dedicate.control.deployments import EventView, RouteView
from dedicate.control.views import EndpointView
from dedicate.domain.catalog import Catalog
from dedicate.domain.endpoints import Intent
from dedicate.domain.offerings import CATALOG_PROJECT, config_id, config_path, instance_name, model_id, model_path
from dedicate.domain.projects import Project
from dedicate.domain.replicas import ReplicaStatus
from dedicate.domain.routes import (
    DeploymentState,
    Level,
    Route,
    Visibility,
    deployment_etag,
    deployment_id,
    deployment_state,
    traffic_shares,
)
from dedicate.domain.scaling import (
    METRIC_TYPES,
    Kind,
    RateRules,
    ScalingRules,
    Select,
    duration_text,
    percentile_name,
)
from dedicate.domain.status import replica_counts

# endpoints and deployments ----------------------------------------------------------------------

class PolicyOut(V2):
    period_seconds: int
    type: Kind
    value: int


class RateOut(V2):
    policies: list[PolicyOut]
    select_policy: Select


class MetricOut(V2):
    name: str = "inflight_requests"
    type: str = "METRIC_TARGET_TYPE_AVERAGE_VALUE"
    target: float
    percentile: str | None = Field(None, exclude_if=lambda v: v is None)


class AutoscalingOut(V2):
    """The bounds and the scaling rules in force (windows and rates only where set; the metric always)."""

    min_replicas: int
    max_replicas: int
    scale_up_window: str | None = Field(None, exclude_if=lambda v: v is None)
    scale_down_window: str
    scale_to_zero_window: str
    scaling_metrics: list[MetricOut]
    scale_up: RateOut | None = Field(None, exclude_if=lambda v: v is None)
    scale_down: RateOut | None = Field(None, exclude_if=lambda v: v is None)

    @classmethod
    def of(cls, lo: int, hi: int, rules: ScalingRules, down_default_s: float, target: float) -> AutoscalingOut:
        def rate(r: RateRules) -> RateOut | None:
            if not r.limits:
                return None
            return RateOut(policies=[PolicyOut(period_seconds=p.period_s, type=p.kind, value=p.value)
                                     for p in r.policies], select_policy=r.select)
        down = down_default_s if rules.down_window_s is None else rules.down_window_s
        return cls(min_replicas=lo, max_replicas=hi,
                   scale_up_window=duration_text(rules.up_window_s) if rules.up_window_s else None,
                   scale_down_window=duration_text(down),
                   scale_to_zero_window=duration_text(down if rules.zero_window_s is None else rules.zero_window_s),
                   scaling_metrics=[MetricOut(target=target, percentile=None) if rules.metric is None else
                                    MetricOut(name=rules.metric.name, type=METRIC_TYPES[rules.metric.name],
                                              target=rules.metric.target,
                                              percentile=percentile_name(rules.metric.percentile))],
                   scale_up=rate(rules.up), scale_down=rate(rules.down))


class DeploymentStatusOut(V2):
    state: DeploymentState
    message: str
    ready_replicas: int
    scheduled_replicas: int


class Pricing(V2):
    """What the deployment costs at its bounds (dedicate's; the v1 `pricing`)."""

    cents_per_replica_minute: Cents
    cents_per_hour_at_min: Cents
    cents_per_hour_at_max: Cents


class _Facts:
    """What a deployment's v2 objects are built from, worked out once."""

    def __init__(self, route: Route, view: EndpointView, catalog: Catalog, share: float | None,
                 down_default_s: float) -> None:
        ep = view.endpoint
        self.ep = ep
        self.id = deployment_id(ep.id)
        self.name = f"{route.name}/{ep.deployment_name or 'default'}"
        self.counts = replica_counts(ep, view.replicas)
        self.state = deployment_state(ep, self.counts)
        stopped = ep.intent is Intent.STOP or ep.deleted_at is not None
        target = view.target.value if view.target is not None else (ep.target_concurrency or 1.0)
        self.autoscaling = AutoscalingOut.of(0 if stopped else ep.min_replicas, 0 if stopped else ep.max_replicas,
                                             ScalingRules.from_json(ep.scaling_rules), down_default_s, target)
        spec, hw = catalog.models.get(ep.model), catalog.hardware.get(ep.hardware)
        self.model_id = model_id(ep.model)
        self.model = model_path(CATALOG_PROJECT, self.model_id)
        self.config_id = config_id(spec, hw) if spec is not None and hw is not None else ""
        self.config = config_path(CATALOG_PROJECT, self.config_id) if self.config_id else ""
        self.hardware = instance_name(hw) if hw is not None else ep.hardware
        self.share = share
        self.scheduled = self.counts.ready + self.counts.starting
        p = view.prediction
        self.pricing = Pricing(cents_per_replica_minute=p.cents_per_replica_minute,
                               cents_per_hour_at_min=p.cents_per_hour_at_min,
                               cents_per_hour_at_max=p.cents_per_hour_at_max)


class DeploymentSummary(V2):
    id: str
    name: str = Field(description="<project slug>/<endpoint>/<deployment>")
    model: str
    model_id: str
    state: DeploymentState
    traffic_mode: Literal["TRAFFIC_MODE_LIVE"] = "TRAFFIC_MODE_LIVE"
    autoscaling: AutoscalingOut
    hardware: str
    desired_replicas: int
    ready_replicas: int
    estimated_effective_traffic_share: float | None
    created_at: Time

    @classmethod
    def of(cls, f: _Facts) -> DeploymentSummary:
        return cls(id=f.id, name=f.name, model=f.model, model_id=f.model_id, state=f.state,
                   autoscaling=f.autoscaling, hardware=f.hardware, desired_replicas=f.counts.desired,
                   ready_replicas=f.counts.ready, estimated_effective_traffic_share=f.share,
                   created_at=f.ep.created_at)


class RuntimeInfo(V2):
    engine_type: str


class DeploymentOut(V2):
    id: str
    name: str
    endpoint_id: str
    project_id: str
    etag: str = Field(description="changes when the deployment's own settings do (not with its replicas); "
                                  "PATCH and DELETE may pass it")
    status: DeploymentStatusOut
    model: str
    model_id: str
    config: str
    config_id: str
    hardware: str = Field(description="{count}x{accelerator}, e.g. 1xnvidia-h100-80gb")
    dedicate_hardware: str = Field(description="dedicate's hardware id (v1's `hardware`)")
    autoscaling: AutoscalingOut
    inactive_timeout: int = Field(description="minutes; 0: never")
    max_concurrent_requests_per_replica: str = Field(description="int64 as a string; \"0\": no cap")
    traffic_mode: Literal["TRAFFIC_MODE_LIVE"] = "TRAFFIC_MODE_LIVE"
    desired_replicas: int
    ready_replicas: int
    estimated_effective_traffic_share: float | None
    runtime_info: RuntimeInfo
    pricing: Pricing
    legacy_id: str = Field(description="the same deployment's id in the v1 API (/v1/endpoints/{id})")
    created_at: Time
    updated_at: Time

    @classmethod
    def of(cls, route: Route, view: EndpointView, catalog: Catalog, share: float | None,
           down_default_s: float) -> DeploymentOut:
        f = _Facts(route, view, catalog, share, down_default_s)
        ep = f.ep
        hw = catalog.hardware.get(ep.hardware)
        return cls(id=f.id, name=f.name, endpoint_id=route.id, project_id=Project.of(route.owner).id,
                   etag=deployment_etag(ep),
                   status=DeploymentStatusOut(state=f.state, message=ep.status_message,
                                              ready_replicas=f.counts.ready, scheduled_replicas=f.scheduled),
                   model=f.model, model_id=f.model_id, config=f.config, config_id=f.config_id,
                   hardware=f.hardware, dedicate_hardware=ep.hardware, autoscaling=f.autoscaling,
                   inactive_timeout=ep.inactive_timeout or 0,
                   max_concurrent_requests_per_replica=str(ep.max_concurrency or 0), desired_replicas=f.counts.desired,
                   ready_replicas=f.counts.ready, estimated_effective_traffic_share=share,
                   runtime_info=RuntimeInfo(engine_type=hw.engine if hw is not None else ""),
                   pricing=f.pricing, legacy_id=ep.id, created_at=ep.created_at, updated_at=ep.updated_at)


class SplitOut(V2):
    deployment_id: str
    weight: float


class EndpointOut(V2):
    id: str
    name: str = Field(description="<project slug>/<name>: what inference requests name as `model`")
    project_id: str
    endpoint_type: Literal["ENDPOINT_TYPE_DEDICATED"] = "ENDPOINT_TYPE_DEDICATED"
    visibility: Visibility
    etag: str = Field(description="changes with the endpoint's own fields only, never with a deployment's")
    traffic_split: list[SplitOut]
    deployments: list[DeploymentSummary]
    created_at: Time
    updated_at: Time

    @classmethod
    def of(cls, rv: RouteView, catalog: Catalog, down_default_s: float) -> EndpointOut:
        route = rv.route
        live = {v.endpoint.id for v in rv.deployments}
        shares = route_shares(rv)
        return cls(id=route.id, name=route.name, project_id=Project.of(route.owner).id, visibility=route.visibility,
                   etag=route.etag,
                   traffic_split=[SplitOut(deployment_id=deployment_id(e.deployment), weight=e.weight)
                                  for e in route.split if e.deployment in live],
                   deployments=[DeploymentSummary.of(_Facts(route, v, catalog, shares.get(v.endpoint.id),
                                                            down_default_s))
                                for v in rv.deployments],
                   created_at=route.created_at, updated_at=route.updated_at)


def route_shares(rv: RouteView) -> dict[str, float]:
    ready = {v.endpoint.id: v.count(ReplicaStatus.READY) for v in rv.deployments}
    return traffic_shares(rv.route.split, ready, {v.endpoint.id: v.endpoint.should_run for v in rv.deployments})


# events -----------------------------------------------------------------------------------------

class EventOut(V2):
    id: str
    created_at: Time
    endpoint_id: str
    deployment_id: str | None
    level: Level
    source: str
    source_kind: Literal["SOURCE_KIND_ENDPOINT", "SOURCE_KIND_DEPLOYMENT"]
    type: str = Field(description="endpoint.created, deployment.created/updated/scaled/deleted, condition.set")
    name: str = Field(description="the endpoint's or the deployment's qualified name")
    message: str
    subject_id: str
    old_replicas: int | None
    new_replicas: int | None

    @classmethod
    def of(cls, route: Route, v: EventView) -> EventOut:
        dep = deployment_id(v.deployment) if v.deployment is not None else None
        old, new = v.replicas if v.replicas is not None else (None, None)
        return cls(id=v.id, created_at=v.at, endpoint_id=route.id, deployment_id=dep, level=v.level,
                   source="dedicate", source_kind="SOURCE_KIND_DEPLOYMENT" if dep else "SOURCE_KIND_ENDPOINT",
                   type=v.type, name=v.name, message=v.message, subject_id=dep or route.id, old_replicas=old,
                   new_replicas=new)


DeploymentPage = Page[DeploymentOut]
EndpointPage = Page[EndpointOut]
EventPage = Page[EventOut]
EmptyPage = Page[dict[str, str]]  # a collection dedicate does not fill yet (experiments, rollouts, adapters)
