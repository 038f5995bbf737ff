"""v2 analytics of an endpoint on the wire: Together's metrics objects and series (see ``schemas_v2.py``)."""

from __future__ import annotations

from pydantic import Field

from dedicate.api.schemas import Time
from dedicate.api.schemas_v2 import V2
from dedicate.control.analytics import Analytics, Point, Totals
from dedicate.domain import latency
from dedicate.domain.routes import deployment_id

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
