"""v2 analytics of an endpoint: its deployments' minutes over a time range, summed and in a series.

Every gateway process writes its count of each deployment's minutes (``Store.write_minutes``);
this sums them per deployment and for the endpoint over [start, end), reads percentiles off the
merged histograms, and cuts a series at 1 minute, 1 hour or 1 day. Minutes are kept a week.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dedicate.control.deployments import Deployments
from dedicate.domain import latency
from dedicate.domain.errors import InvalidRequest
from dedicate.domain.records import DeploymentMinute
from dedicate.domain.replicas import ReplicaStatus
from dedicate.domain.routes import Route, record_id
from dedicate.store.usage import MINUTES_KEPT_DAYS

GRANULARITY = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}


@dataclass
class Totals:
    """Minutes summed."""

    requests: int = 0
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    ttft: list[int] = field(default_factory=latency.empty)
    latency: list[int] = field(default_factory=latency.empty)

    def add(self, m: DeploymentMinute) -> None:
        self.requests += m.requests
        self.failures += m.failures
        self.tokens_in += m.tokens_in
        self.tokens_out += m.tokens_out
        for code, n in m.statuses.items():
            self.statuses[code] = self.statuses.get(code, 0) + n
        self.ttft = latency.merged([self.ttft, m.ttft])
        self.latency = latency.merged([self.latency, m.latency])


@dataclass(frozen=True)
class Point:
    at: datetime
    totals: Totals


@dataclass(frozen=True)
class DeploymentAnalytics:
    deployment: str  # record id
    totals: Totals
    series: list[Point]
    ready: int
    desired: int


@dataclass(frozen=True)
class Analytics:
    route: Route
    start: datetime
    end: datetime
    totals: Totals
    series: list[Point]
    deployments: list[DeploymentAnalytics]


def _series(minutes: list[DeploymentMinute], start: datetime, step: timedelta) -> list[Point]:
    buckets: dict[int, Totals] = {}
    for m in minutes:
        i = int((m.minute - start) / step)
        buckets.setdefault(i, Totals()).add(m)
    return [Point(start + i * step, t) for i, t in sorted(buckets.items())]


def analytics(d: Deployments, owner: str, key: str, *, deployment: str | None, start: datetime | None,
              end: datetime | None, granularity: str, series: bool) -> Analytics:
    step = GRANULARITY.get(granularity)
    if step is None:
        raise InvalidRequest("granularity must be 1m, 1h or 1d", param="granularity")
    rv = d.get_endpoint(owner, key)
    end = end or d.svc.clock.now()
    start = start or end - timedelta(days=1)
    if start >= end:
        raise InvalidRequest("startTime must be before endTime", param="startTime")
    if end - start > timedelta(days=MINUTES_KEPT_DAYS):
        raise InvalidRequest(f"the range is at most {MINUTES_KEPT_DAYS:g} days: minutes are kept that long",
                             param="startTime")
    members = {v.endpoint.id: v for v in rv.deployments}
    if deployment is not None:
        rec = record_id(deployment)
        if rec not in members:
            raise InvalidRequest(f"deploymentId {deployment!r} is not a deployment of this endpoint",
                                 param="deploymentId")
        members = {rec: members[rec]}
    minutes = d.store.minutes(list(members), start, end)
    total = Totals()
    for m in minutes:
        total.add(m)
    per = []
    for rec, view in members.items():
        mine = [m for m in minutes if m.endpoint_id == rec]
        t = Totals()
        for m in mine:
            t.add(m)
        per.append(DeploymentAnalytics(rec, t, _series(mine, start, step) if series else [],
                                       view.count(ReplicaStatus.READY), view.endpoint.desired_replicas))
    return Analytics(rv.route, start, end, total, _series(minutes, start, step) if series else [], per)
