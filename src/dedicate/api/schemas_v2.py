"""API objects of Together's v2 API (``/v2/...``), as the together 3.1.1 SDK and ``tg`` read them.

v2 is proto3 JSON: camelCase keys, enums by their full names (``VISIBILITY_INTERNAL``), int64
values as strings (``contextLength``), times in RFC 3339. Lists are ``{"object": "list", "data":
[...], "next_cursor": ...}``, with ``next_cursor`` in snake_case and ``data`` never null.
``docs/api-v2.md`` says what is supported; ``../shared/API-COMPAT-V2.md`` is the contract.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from dedicate.api.schemas import Cents, Time
from dedicate.control.analytics import Analytics, Point, Totals
from dedicate.control.deployments import EventView, RouteView
from dedicate.control.offerings import InstanceType
from dedicate.control.views import EndpointView
from dedicate.domain import latency
from dedicate.domain.catalog import Catalog
from dedicate.domain.endpoints import Intent
from dedicate.domain.models import ModelSpec
from dedicate.domain.offerings import (
    CATALOG_PROJECT,
    Offer,
    SupportedModel,
    accelerator_type,
    cents_per_hour,
    config_id,
    config_path,
    instance_name,
    model_id,
    model_path,
)
from dedicate.domain.projects import Organization, Project
from dedicate.domain.records import OwnerModel
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


class V2(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


# the catalog: supported models and their deployment profiles -----------------------------------

class Benchmarks(V2):
    max_context_length: str | None = Field(None, description="int64, as a string")


class DeploymentProfile(V2):
    """One shape the model fits and runs on here; ``config`` is what a deployment of it names."""

    model: str = Field(description="projects/{project}/models/{model}: what POST .../deployments takes as `model`")
    config: str = Field(description="projects/{project}/configs/{config}: what POST .../deployments takes as `config`")
    model_name: str = Field(description="the name users type, e.g. dedicate/tiny-chat")
    certified_config_revision_id: str
    certified_model_revision_id: str = ""
    profile_id: str
    gpu_count: int
    gpu_type: str = Field(description="nvidia-h100-80gb, or cpu")
    parallelism: str = Field(description="tensor parallelism over the replica's GPUs, e.g. TP2")
    quantization: str = Field(description="the weights' dtype")
    adapter_mode: Literal["ADAPTER_MODE_DISABLED"] = "ADAPTER_MODE_DISABLED"
    performance_benchmarks: Benchmarks
    hardware: str = Field(description="dedicate's hardware id of the shape (v1's `hardware`)")

    @classmethod
    def of(cls, o: Offer) -> DeploymentProfile:
        return cls(model=model_path(CATALOG_PROJECT, model_id(o.model)),
                   config=config_path(CATALOG_PROJECT, o.config_id), model_name=o.model.name,
                   certified_config_revision_id=o.config_id, profile_id=o.config_id,
                   gpu_count=o.hardware.gpu_count, gpu_type=accelerator_type(o.hardware),
                   parallelism=f"TP{o.hardware.gpu_count}", quantization=o.model.dtype,
                   performance_benchmarks=Benchmarks(max_context_length=str(o.model.context_length)),
                   hardware=o.hardware.id)


class SupportedModelOut(V2):
    id: str
    name: str
    display_name: str
    display_type: Literal["chat"] = "chat"
    publisher: str
    architecture: str
    context_length: str
    description: str
    base_model: str
    base_model_id: str
    status: Literal["SUPPORTED_MODEL_STATUS_SUPPORTED"] = "SUPPORTED_MODEL_STATUS_SUPPORTED"
    capabilities: list[Literal["CAPABILITY_CHAT"]] = ["CAPABILITY_CHAT"]
    input_modalities: list[Literal["MODALITY_TEXT"]] = ["MODALITY_TEXT"]
    output_modalities: list[Literal["MODALITY_TEXT"]] = ["MODALITY_TEXT"]
    products: list[Literal["PRODUCT_DEDICATED"]] = ["PRODUCT_DEDICATED"]
    deployment_profiles: list[DeploymentProfile]
    created_at: Time
    updated_at: Time

    @classmethod
    def of(cls, m: SupportedModel, since: Time) -> SupportedModelOut:
        spec = m.model
        return cls(id=m.id, name=spec.name, display_name=spec.name, publisher=spec.name.partition("/")[0],
                   architecture=spec.family, context_length=str(spec.context_length),
                   description=f"{spec.name}: {spec.params_b:g}B parameters, {spec.dtype}",
                   base_model=model_path(CATALOG_PROJECT, m.id), base_model_id=m.id,
                   deployment_profiles=[DeploymentProfile.of(o) for o in m.offers],
                   created_at=since, updated_at=since)


class SupportedModelPage(V2):
    object: Literal["list"] = "list"
    data: list[SupportedModelOut]
    next_cursor: str | None = Field(None, alias="next_cursor")


# models -----------------------------------------------------------------------------------------

class Parameters(V2):
    total: str = Field(description="int64, as a string")
    by_dtype: list[dict[str, str]] = Field(default_factory=list)


class Weights(V2):
    type: Literal["WEIGHTS_TYPE_DEFAULT", "WEIGHTS_TYPE_ADAPTER"] = "WEIGHTS_TYPE_DEFAULT"
    architecture: str
    context_length: str
    parameters: Parameters


class ModelOut(V2):
    id: str
    name: str
    project_id: str
    organization_id: str
    visibility: Literal["VISIBILITY_PRIVATE", "VISIBILITY_INTERNAL"] = "VISIBILITY_INTERNAL"
    weights: Weights
    base_model: str
    base_model_id: str
    description: str
    created_at: Time

    @classmethod
    def catalog(cls, m: SupportedModel, org: Organization, since: Time) -> ModelOut:
        spec = m.model
        return cls(id=m.id, name=spec.name, project_id=CATALOG_PROJECT, organization_id=org.id,
                   weights=_weights(spec, "WEIGHTS_TYPE_DEFAULT"),
                   base_model=model_path(CATALOG_PROJECT, m.id), base_model_id=m.id,
                   description=f"{spec.name} from the installation's catalog", created_at=since)

    @classmethod
    def registered(cls, m: OwnerModel, base: ModelSpec, org: Organization) -> ModelOut:
        """A project's fine-tune: private to it, with its base's architecture and size."""
        kind: Literal["WEIGHTS_TYPE_DEFAULT", "WEIGHTS_TYPE_ADAPTER"] = \
            "WEIGHTS_TYPE_ADAPTER" if m.kind == "WEIGHTS_TYPE_ADAPTER" else "WEIGHTS_TYPE_DEFAULT"
        return cls(id=m.id, name=m.name, project_id=Project.of(m.owner).id, organization_id=org.id,
                   visibility="VISIBILITY_PRIVATE", weights=_weights(base, kind),
                   base_model=model_path(CATALOG_PROJECT, model_id(m.base)), base_model_id=model_id(m.base),
                   description=m.description or f"a fine-tune of {m.base}", created_at=m.created_at)


def _weights(spec: ModelSpec, kind: Literal["WEIGHTS_TYPE_DEFAULT", "WEIGHTS_TYPE_ADAPTER"]) -> Weights:
    total = str(round(spec.params_b * 1e9))
    return Weights(type=kind, architecture=spec.family, context_length=str(spec.context_length),
                   parameters=Parameters(total=total, by_dtype=[{"dtype": spec.dtype, "count": total}]))


class UploadOut(V2):
    directory: str = Field(description="the upload's directory under the model root: register it as `path`")
    file: str
    bytes: str = Field(description="int64, as a string")
    upload_bytes: str = Field(description="every file of the upload together")


class ModelPage(V2):
    object: Literal["list"] = "list"
    data: list[ModelOut]
    next_cursor: str | None = Field(None, alias="next_cursor")


# configs ----------------------------------------------------------------------------------------

class Selector(V2):
    key: str
    value: str


class ConfigOut(V2):
    """A model on one shape: the engine, GPU type and count its deployments run on."""

    id: str
    project_id: str
    reference_model: str
    reference_model_id: str
    selectors: list[Selector]
    certifications: list[dict[str, str]] = Field(default_factory=list)

    @classmethod
    def of(cls, o: Offer) -> ConfigOut:
        mid = model_id(o.model)
        return cls(id=o.config_id, project_id=CATALOG_PROJECT, reference_model=model_path(CATALOG_PROJECT, mid),
                   reference_model_id=mid, selectors=[Selector(key=k, value=v) for k, v in o.selectors])


class ConfigPage(V2):
    object: Literal["list"] = "list"
    data: list[ConfigOut]
    next_cursor: str | None = Field(None, alias="next_cursor")


# instance types ---------------------------------------------------------------------------------

class Headroom(V2):
    relation: Literal["RELATION_EQ"] = "RELATION_EQ"
    value: int = Field(description="replicas of this shape that the free slots hold now")


class Region(V2):
    name: str
    headroom: Headroom


class InstanceTypeOut(V2):
    id: str = Field(description="dedicate's hardware id")
    name: str = Field(description="{accelerator_count}x{accelerator_type}, as the CLI composes it from a config")
    description: str
    gpu_count: int
    gpu_memory_gib: int
    gpu_type: str
    price_cents_per_hour: int = Field(description="per replica, rounded to whole cents")
    regions: list[Region]

    @classmethod
    def of(cls, t: InstanceType) -> InstanceTypeOut:
        hw = t.hardware
        what = "CPU slot" if hw.is_cpu else f"{hw.gpu_type.upper()} GPU"
        return cls(id=hw.id, name=instance_name(hw), description=f"{hw.gpu_count}x {what}, {hw.engine} engine",
                   gpu_count=hw.gpu_count, gpu_memory_gib=hw.gpu_memory_gb, gpu_type=accelerator_type(hw),
                   price_cents_per_hour=cents_per_hour(hw),
                   regions=[Region(name=z, headroom=Headroom(value=n)) for z, n in t.headroom])


class InstanceTypeList(V2):
    object: Literal["list"] = "list"
    data: list[InstanceTypeOut]
    next_cursor: None = Field(None, alias="next_cursor")


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


class DeploymentPage(V2):
    object: Literal["list"] = "list"
    data: list[DeploymentOut]
    next_cursor: str | None = Field(None, alias="next_cursor")


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
    return traffic_shares(rv.route.split, ready)


class EndpointPage(V2):
    object: Literal["list"] = "list"
    data: list[EndpointOut]
    next_cursor: str | None = Field(None, alias="next_cursor")


class EmptyPage(V2):
    """A collection dedicate does not fill yet (A/B and shadow experiments, rollouts, adapters): always empty."""

    object: Literal["list"] = "list"
    data: list[dict[str, str]] = Field(default_factory=list)
    next_cursor: None = Field(None, alias="next_cursor")


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


class EventPage(V2):
    object: Literal["list"] = "list"
    data: list[EventOut]
    next_cursor: str | None = Field(None, alias="next_cursor")


# analytics --------------------------------------------------------------------------------------

class TimeRange(V2):
    start_time: Time
    end_time: Time


class RequestMetrics(V2):
    total_requests: str
    successful_requests: str
    failed_requests: str
    requests_per_second: float
    requests_by_status_code: dict[str, str]


class TokenMetrics(V2):
    total_input_tokens: str
    total_output_tokens: str
    avg_input_tokens: float
    avg_output_tokens: float


class LatencyMetrics(V2):
    """Percentiles in ms, from histograms (exact to their bucket); null without requests."""

    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None


class ErrorMetrics(V2):
    error_rate: float
    errors_by_type: dict[str, str] = Field(description="failed answers by HTTP status")


class ReplicaCountsOut(V2):
    ready_replicas: int
    desired_replicas: int


class MetricsOut(V2):
    endpoint_id: str
    deployment_id: str | None = Field(None, exclude_if=lambda v: v is None)
    request_metrics: RequestMetrics
    token_metrics: TokenMetrics
    latency_metrics: LatencyMetrics
    error_metrics: ErrorMetrics
    replicas: ReplicaCountsOut | None = Field(None, exclude_if=lambda v: v is None,
                                              description="the deployment's replicas now")
    time_range: TimeRange
    deployment_metrics: list[MetricsOut] | None = Field(None, exclude_if=lambda v: v is None)

    @classmethod
    def of(cls, endpoint_id: str, t: Totals, rng: TimeRange, seconds: float, deployment: str | None = None,
           replicas: ReplicaCountsOut | None = None, per: list[MetricsOut] | None = None) -> MetricsOut:
        ok = t.requests - t.failures
        return cls(
            endpoint_id=endpoint_id, deployment_id=deployment,
            request_metrics=RequestMetrics(total_requests=str(t.requests), successful_requests=str(ok),
                                           failed_requests=str(t.failures),
                                           requests_per_second=round(t.requests / seconds, 6) if seconds else 0.0,
                                           requests_by_status_code={k: str(v) for k, v in sorted(t.statuses.items())}),
            token_metrics=TokenMetrics(total_input_tokens=str(t.tokens_in), total_output_tokens=str(t.tokens_out),
                                       avg_input_tokens=t.tokens_in / t.requests if t.requests else 0.0,
                                       avg_output_tokens=t.tokens_out / t.requests if t.requests else 0.0),
            latency_metrics=LatencyMetrics(**{f"{name}_p{q}_ms": _ms(latency.percentile(h, q))
                                              for name, h in (("ttft", t.ttft), ("latency", t.latency))
                                              for q in (50, 90, 99)}),
            error_metrics=ErrorMetrics(error_rate=t.failures / t.requests if t.requests else 0.0,
                                       errors_by_type={k: str(v) for k, v in sorted(t.statuses.items())
                                                       if int(k) >= 400}),
            replicas=replicas, time_range=rng, deployment_metrics=per)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


class PointOut(V2):
    timestamp: Time
    values: dict[str, float]

    @classmethod
    def of(cls, p: Point) -> PointOut:
        t = p.totals
        values: dict[str, float] = {"requests": t.requests, "failedRequests": t.failures,
                                    "inputTokens": t.tokens_in, "outputTokens": t.tokens_out}
        for name, h in (("ttft", t.ttft), ("latency", t.latency)):
            for q in (50, 99):
                v = latency.percentile(h, q)
                if v is not None:
                    values[f"{name}P{q}Ms"] = round(v, 1)
        return cls(timestamp=p.at, values=values)


class DeploymentAnalyticsOut(V2):
    deployment_id: str
    endpoint_id: str
    metrics: MetricsOut
    time_range: TimeRange
    time_series: list[PointOut]


class AnalyticsOut(V2):
    endpoint_id: str
    time_range: TimeRange
    metrics: MetricsOut
    time_series: list[PointOut]
    deployment_analytics: list[DeploymentAnalyticsOut]

    @classmethod
    def of(cls, a: Analytics) -> AnalyticsOut:
        rng = TimeRange(start_time=a.start, end_time=a.end)
        seconds = (a.end - a.start).total_seconds()
        per = [DeploymentAnalyticsOut(
            deployment_id=deployment_id(d.deployment), endpoint_id=a.route.id,
            metrics=MetricsOut.of(a.route.id, d.totals, rng, seconds, deployment_id(d.deployment),
                                  ReplicaCountsOut(ready_replicas=d.ready, desired_replicas=d.desired)),
            time_range=rng, time_series=[PointOut.of(p) for p in d.series]) for d in a.deployments]
        return cls(endpoint_id=a.route.id, time_range=rng,
                   metrics=MetricsOut.of(a.route.id, a.totals, rng, seconds, per=[p.metrics for p in per]),
                   time_series=[PointOut.of(p) for p in a.series], deployment_analytics=per)
