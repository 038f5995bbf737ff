"""The v2 API's bodies: camelCase, unknown fields refused, as Together's proto messages are.

Autoscaling takes the bounds and v2's scaling rules (windows, the metric, rate policies), each
checked with the request by ``domain/scaling.py``: a metric dedicate cannot observe is a 400
naming the one it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dedicate.domain.endpoints import MAX_REPLICAS
from dedicate.domain.errors import InvalidRequest
from dedicate.domain.scaling import Metric, RateRules, ScalingRules, parse_duration, parse_metric, parse_rate_rules

INACTIVE_MIN, INACTIVE_MAX = 30, 1440


class V2Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SplitIn(V2Body):
    deployment_id: str
    weight: float


class EndpointIn(V2Body):
    """``POST /v2/projects/{p}/endpoints``."""

    name: str = Field(description="bare (`chat`) or qualified with your project's slug (`alice/chat`)")
    visibility: Literal["VISIBILITY_PRIVATE", "VISIBILITY_INTERNAL"] = "VISIBILITY_PRIVATE"


class EndpointPatchIn(V2Body):
    """``PATCH /v2/projects/{p}/endpoints/{e}``; with ``updateMask``, only the fields it names change."""

    etag: str | None = None
    name: str | None = None
    visibility: Literal["VISIBILITY_PRIVATE", "VISIBILITY_INTERNAL"] | None = None
    traffic_split: list[SplitIn] | None = None


class AutoscalingIn(V2Body):
    """Bounds and v2's scaling rules; on update, what is omitted keeps its value. 0/0 stops the deployment."""

    min_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    max_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    scale_up_window: str | None = Field(default=None, description='a duration, e.g. "30s": an increase waits '
                                                                  "until the load has asked for it that long")
    scale_down_window: str | None = Field(default=None, description='a duration; default "300s"')
    scale_to_zero_window: str | None = Field(default=None, description="silence before no replica is left "
                                                                       "(minReplicas 0); default: the down window")
    scaling_metrics: list[dict[str, Any]] | None = Field(
        default=None, description="one metric and its target: inflight_requests (the default), ttft or e2e_latency "
                                  "(ms, at a percentile), throughput_per_replica (tokens/s), token_utilization (%)")
    scale_up: dict[str, Any] | None = Field(default=None, description="{policies: [{periodSeconds, type, value}], "
                                                                      "selectPolicy}")
    scale_down: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _rules(self) -> AutoscalingIn:
        self.parsed()  # every rule is checked with the request, before anything is stored
        return self

    def parsed(self) -> ParsedRules:
        windows = {}
        for name, value in (("scaleUpWindow", self.scale_up_window), ("scaleDownWindow", self.scale_down_window),
                            ("scaleToZeroWindow", self.scale_to_zero_window)):
            if value is not None:
                windows[name] = parse_duration(value, f"autoscaling.{name}")
        return ParsedRules(windows, parse_metric(self.scaling_metrics),
                           parse_rate_rules(self.scale_up, "autoscaling.scaleUp") if self.scale_up is not None
                           else None,
                           parse_rate_rules(self.scale_down, "autoscaling.scaleDown") if self.scale_down is not None
                           else None)


@dataclass(frozen=True)
class ParsedRules:
    windows: dict[str, float]  # the windows given, by their v2 names, in seconds
    metric: Metric | None  # the metric given, if one was
    up: RateRules | None
    down: RateRules | None

    @property
    def target(self) -> float | None:
        """inflight_requests' target: the deployment's target concurrency."""
        return self.metric.target if self.metric is not None and self.metric.name == "inflight_requests" else None

    def merged(self, rules: ScalingRules) -> ScalingRules:
        """``rules`` with what was given here; a metric given replaces the one before (in flight is kept
        as the target concurrency, not here)."""
        w = self.windows
        metric = rules.metric if self.metric is None else \
            (None if self.metric.name == "inflight_requests" else self.metric)
        return ScalingRules(up_window_s=w.get("scaleUpWindow", rules.up_window_s),
                            down_window_s=w.get("scaleDownWindow", rules.down_window_s),
                            zero_window_s=w.get("scaleToZeroWindow", rules.zero_window_s),
                            up=self.up if self.up is not None else rules.up,
                            down=self.down if self.down is not None else rules.down, metric=metric)


def _inactive(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or
                                                                     INACTIVE_MIN <= value <= INACTIVE_MAX):
        raise InvalidRequest(f"inactiveTimeout must be 0 (never) or {INACTIVE_MIN} to {INACTIVE_MAX} minutes, "
                             f"got {value!r}", param="inactiveTimeout")
    return value


class DeploymentIn(V2Body):
    """``POST .../deployments``: a model on a config (a shape), with its bounds."""

    name: str
    autoscaling: AutoscalingIn
    model: str | None = Field(default=None, description="projects/{p}/models/{m}[/revisions/{r}]")
    config: str | None = Field(default=None, description="projects/{p}/configs/{cr}: the shape")
    inactive_timeout: int | None = Field(default=None, description="minutes; 0 or omitted: never; else 30 to 1440")
    max_concurrent_requests_per_replica: str | None = Field(
        default=None, description="int64 as a string: requests a replica is sent at once at most; 0 or omitted: "
                                  "no cap (beyond it requests wait in the gateway's queue)")
    placement: dict[str, Any] | None = None
    config_id: str | None = None
    model_id: str | None = None
    model_revision_id: str | None = None

    _inactive = field_validator("inactive_timeout", mode="before")(_inactive)


class DeploymentPatchIn(V2Body):
    """``PATCH .../deployments/{d}``: ``autoscaling`` merges with the stored bounds."""

    etag: str | None = None
    autoscaling: AutoscalingIn | None = None
    inactive_timeout: int | None = None
    max_concurrent_requests_per_replica: str | None = None
    name: str | None = None

    _inactive = field_validator("inactive_timeout", mode="before")(_inactive)


def parse_mask(mask: str | None, allowed: tuple[str, ...]) -> set[str] | None:
    """``updateMask=a,b`` as the top-level fields it names; None when absent (the fields given change)."""
    if mask is None or not mask.strip():
        return None
    fields = set()
    for path in mask.split(","):
        head = path.strip().split(".")[0]
        if head not in allowed:
            raise InvalidRequest(f"updateMask names {path.strip()!r}; it may name: {', '.join(allowed)}",
                                 param="updateMask")
        fields.add(head)
    return fields


class ModelIn(V2Body):
    """``POST /v2/projects/{p}/models``: a fine-tune of a supported base, from a directory of its weights."""

    name: str = Field(description="bare, or qualified with your project's slug")
    base_model_id: str = Field(description="the supported model it was trained from: an ml_… id or its name")
    type: Literal["WEIGHTS_TYPE_DEFAULT", "WEIGHTS_TYPE_ADAPTER"] = "WEIGHTS_TYPE_DEFAULT"
    description: str = ""
    path: str = Field(description="dedicate's: the directory of the weights, under <model root>/owners/<owner>/ "
                                  "(an admin's, anywhere under the model root)")


def parse_cap(value: str | None) -> int | None:
    """``maxConcurrentRequestsPerReplica``: a whole number as a string; 0 is no cap (None)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) > 1_000_000:
        raise InvalidRequest(f"maxConcurrentRequestsPerReplica must be a whole number from 0 to 1000000 (as a "
                             f"string), got {value!r}", param="maxConcurrentRequestsPerReplica")
    return int(text) or None
