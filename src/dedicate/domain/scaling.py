"""A deployment's scaling rules as v2 gives them: windows, the metric and its target, rate limits.

Stored with the deployment (``endpoints.scaling_rules``, JSON) and applied by the pure policy
(``autoscaler/policy.py``): the up window holds an increase until the load has asked for it
that long, the down window holds a decrease the same way, the zero window is how long a
deployment with ``minReplicas`` 0 must see no traffic before it has no replica, and each
direction's rate policies cap how far the count moves within a period.

The metric is requests in flight per replica (``inflight_requests``, the default; its target is
the deployment's target concurrency), time to first token or end-to-end latency at a
percentile (``ttft``, ``e2e_latency``, from the gateways' minutes), output tokens per second
per replica (``throughput_per_replica``), or how full the engines' KV cache is
(``token_utilization``). The others v2 names are refused with a message that says so.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field

from dedicate.domain.errors import InvalidRequest

MAX_WINDOW_S = 3600.0
MAX_PERIOD_S = 1800
OBSERVED_METRICS = ("inflight_requests", "ttft", "e2e_latency", "throughput_per_replica", "token_utilization")
LATENCY_METRICS = ("ttft", "e2e_latency")
PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}
METRIC_TYPES = {"inflight_requests": "METRIC_TARGET_TYPE_AVERAGE_VALUE",
                "throughput_per_replica": "METRIC_TARGET_TYPE_AVERAGE_VALUE",
                "ttft": "METRIC_TARGET_TYPE_VALUE", "e2e_latency": "METRIC_TARGET_TYPE_VALUE",
                "token_utilization": "METRIC_TARGET_TYPE_UTILIZATION"}
KNOWN_METRICS = ("inflight_requests", "ttft", "e2e_latency", "throughput_per_replica", "token_utilization",
                 "active_sessions", "decoding_speed", "gpu_utilization", "cache_hit_rate")
_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


class Select(enum.StrEnum):
    MAX = "SCALING_POLICY_SELECT_MAX"
    MIN = "SCALING_POLICY_SELECT_MIN"
    DISABLED = "SCALING_POLICY_SELECT_DISABLED"


class Kind(enum.StrEnum):
    PODS = "SCALING_POLICY_TYPE_PODS"
    PERCENT = "SCALING_POLICY_TYPE_PERCENT"


@dataclass(frozen=True)
class RatePolicy:
    kind: Kind
    value: int  # replicas, or percent of the count at the start of the period
    period_s: int

    def allowed(self, start: int) -> int:
        """How many replicas the count may move by within one period from ``start``."""
        if self.kind is Kind.PODS:
            return self.value
        return max(1, math.ceil(start * self.value / 100))


@dataclass(frozen=True)
class RateRules:
    policies: tuple[RatePolicy, ...] = ()
    select: Select = Select.MAX

    @property
    def limits(self) -> bool:
        return bool(self.policies) or self.select is Select.DISABLED


@dataclass(frozen=True)
class Metric:
    """The metric a deployment scales on besides requests in flight, and its target."""

    name: str  # ttft, e2e_latency (ms at ``percentile``), throughput_per_replica (tokens/s), token_utilization (%)
    target: float
    percentile: int | None = None


@dataclass(frozen=True)
class ScalingRules:
    up_window_s: float | None = None  # None: at once
    down_window_s: float | None = None  # None: the installation's stabilisation window
    zero_window_s: float | None = None  # None: the down window
    up: RateRules = field(default_factory=RateRules)
    down: RateRules = field(default_factory=RateRules)
    metric: Metric | None = None  # None: requests in flight per replica alone

    def to_json(self) -> str:
        def rules(r: RateRules) -> dict[str, object]:
            return {"select": r.select.value,
                    "policies": [[p.kind.value, p.value, p.period_s] for p in r.policies]}
        m = self.metric
        return json.dumps({"up_window_s": self.up_window_s, "down_window_s": self.down_window_s,
                           "zero_window_s": self.zero_window_s,
                           "up": rules(self.up), "down": rules(self.down),
                           "metric": None if m is None else [m.name, m.target, m.percentile]},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> ScalingRules:
        if not text:
            return cls()
        raw = json.loads(text)

        def rules(r: dict[str, object] | None) -> RateRules:
            if not r:
                return RateRules()
            policies = r.get("policies") or []
            assert isinstance(policies, list)
            return RateRules(tuple(RatePolicy(Kind(k), int(v), int(p)) for k, v, p in policies),
                             Select(str(r.get("select", Select.MAX.value))))
        m = raw.get("metric")
        return cls(raw.get("up_window_s"), raw.get("down_window_s"), raw.get("zero_window_s"),
                   rules(raw.get("up")), rules(raw.get("down")),
                   None if not m else Metric(str(m[0]), float(m[1]), None if m[2] is None else int(m[2])))


def parse_duration(value: object, param: str) -> float:
    """``"300s"``, ``"5m"``, ``"1h"``, ``"10m30s"`` (proto Duration, or Go's) as seconds, 0 to an hour."""
    text = value.strip() if isinstance(value, str) else ""
    m = _DURATION.fullmatch(text)
    if not text or m is None or not any(m.groupdict().values()):
        raise InvalidRequest(f"{param} must be a duration such as \"300s\", \"5m\" or \"1h\", got {value!r}",
                             param=param)
    seconds = sum(float(m[u] or 0) * k for u, k in (("h", 3600), ("m", 60), ("s", 1)))
    if seconds > MAX_WINDOW_S:
        raise InvalidRequest(f"{param} must be at most {MAX_WINDOW_S:g}s, got {value!r}", param=param)
    return seconds


def duration_text(seconds: float) -> str:
    """The proto Duration form: ``"300s"``."""
    return f"{seconds:g}s"


def parse_metric(metrics: object) -> Metric | None:
    """The one metric of v2's ``scalingMetrics``, checked; None if absent."""
    if metrics is None:
        return None
    if not isinstance(metrics, list):
        raise InvalidRequest("autoscaling.scalingMetrics must be a list", param="autoscaling.scalingMetrics")
    if len(metrics) > 1:
        raise InvalidRequest("autoscaling.scalingMetrics takes one metric", param="autoscaling.scalingMetrics")
    if not metrics:
        return None
    m = metrics[0]
    where = "autoscaling.scalingMetrics[0]"
    if not isinstance(m, dict):
        raise InvalidRequest(f"{where} must be an object with name, type and target", param=where)
    name = m.get("name")
    if name not in OBSERVED_METRICS:
        known = "" if name in KNOWN_METRICS else " is not a metric v2 knows, and it"
        raise InvalidRequest(f"{where}.name {name!r}{known} cannot be observed by dedicate: it scales on "
                             f"{', '.join(OBSERVED_METRICS)}", param=f"{where}.name")
    kind = METRIC_TYPES[name]
    if m.get("type") not in (None, kind):
        raise InvalidRequest(f"{where}.type for {name} is {kind}", param=f"{where}.type")
    target = m.get("target")
    top = 100 if name == "token_utilization" else 10**7
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= top:
        raise InvalidRequest(f"{where}.target must be a number above 0 and at most {top:g} "
                             f"({_unit(name)})", param=f"{where}.target")
    percentile = m.get("percentile")
    if name in LATENCY_METRICS:
        if percentile is None:
            percentile = "p95"
        if percentile not in PERCENTILES:
            raise InvalidRequest(f"{where}.percentile must be one of {', '.join(PERCENTILES)}",
                                 param=f"{where}.percentile")
        return Metric(name, float(target), PERCENTILES[percentile])
    if percentile is not None:
        raise InvalidRequest(f"{where}.percentile is for latency metrics only (ttft, e2e_latency)",
                             param=f"{where}.percentile")
    return Metric(name, float(target))


def _unit(name: str) -> str:
    return {"inflight_requests": "requests per replica", "ttft": "ms", "e2e_latency": "ms",
            "throughput_per_replica": "tokens per second per replica",
            "token_utilization": "percent of the KV cache"}[name]


def percentile_name(q: int | None) -> str | None:
    return next((k for k, v in PERCENTILES.items() if v == q), None)


def parse_rate_rules(raw: object, param: str) -> RateRules:
    """v2's ``scaleUp`` / ``scaleDown``: ``{"policies": [{periodSeconds, type, value}], "selectPolicy"}``."""
    if raw is None:
        return RateRules()
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{param} must be an object with policies and selectPolicy", param=param)
    unknown = set(raw) - {"policies", "selectPolicy"}
    if unknown:
        raise InvalidRequest(f"{param} has unknown field(s) {', '.join(sorted(unknown))}", param=param)
    select = raw.get("selectPolicy") or Select.MAX.value
    if select not in tuple(Select):
        raise InvalidRequest(f"{param}.selectPolicy must be one of {', '.join(Select)}", param=f"{param}.selectPolicy")
    policies = []
    for i, p in enumerate(raw.get("policies") or []):
        where = f"{param}.policies[{i}]"
        if not isinstance(p, dict):
            raise InvalidRequest(f"{where} must be an object with periodSeconds, type and value", param=where)
        kind, value, period = p.get("type"), p.get("value"), p.get("periodSeconds")
        if kind not in tuple(Kind):
            raise InvalidRequest(f"{where}.type must be one of {', '.join(Kind)}", param=f"{where}.type")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"{where}.value must be a whole number above 0", param=f"{where}.value")
        if isinstance(period, bool) or not isinstance(period, int) or not 1 <= period <= MAX_PERIOD_S:
            raise InvalidRequest(f"{where}.periodSeconds must be a whole number from 1 to {MAX_PERIOD_S}",
                                 param=f"{where}.periodSeconds")
        policies.append(RatePolicy(Kind(kind), value, period))
    return RateRules(tuple(policies), Select(select))
