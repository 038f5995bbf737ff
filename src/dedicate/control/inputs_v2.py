"""The v2 API's bodies: camelCase, unknown fields refused, as Together's proto messages are.

Autoscaling takes the bounds today; the v2 scaling rules (windows, metrics, rate policies) are
refused with a 400 naming what is supported until the policy applies them, so a deployment
never looks as if it honoured a rule that nothing reads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dedicate.domain.endpoints import MAX_REPLICAS
from dedicate.domain.errors import InvalidRequest

NOT_YET = ("scaleUpWindow", "scaleDownWindow", "scaleToZeroWindow", "scalingMetrics", "scaleUp", "scaleDown")
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
    """Bounds; omitted ones keep their value on update. 0/0 stops the deployment."""

    min_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    max_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: object) -> object:
        if isinstance(data, dict):
            given = [k for k in NOT_YET if k in data]
            if given:
                raise InvalidRequest(
                    f"autoscaling.{given[0]} is not supported by dedicate yet: deployments take "
                    "autoscaling.minReplicas and autoscaling.maxReplicas, and scale on requests in flight "
                    "per replica (docs/api-v2.md)", param=f"autoscaling.{given[0]}")
        return data


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
    max_concurrent_requests_per_replica: str | None = None
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
