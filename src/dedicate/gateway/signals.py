"""What the gateway saw, per replica and per endpoint: the autoscaler's input and the idle clock.

Counters live in memory and are touched only from the event loop. Every ~2 s
the server writes one row per endpoint with ``Store.write_signals`` (each
gateway process its own rows; readers sum them), together with the token
usage added since the last write, per endpoint and UTC day. Besides the counts
at the moment of writing, a row carries the most requests in flight and held
at once since the previous write (``peak_load``): a burst that comes and goes
between two writes is still seen by the autoscaler. ``/metrics``
renders the same counters in Prometheus' text format.

Token counts come from the replica's own ``usage`` object: the last
``"prompt_tokens"`` / ``"completion_tokens"`` pair in a non-streamed body (a
bounded tail of it is kept while it passes through) or in a stream's usage
chunk. A request whose answer carries no usage counts as a request with zero
tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from dedicate import exposition
from dedicate.domain import latency
from dedicate.domain.records import DeploymentMinute, EndpointSignals

_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def usage_in(data: bytes) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) of the last usage object in ``data``, if any.

    Inside a JSON string the quotes of these names would be escaped, so only a
    real ``usage`` object matches.
    """
    if b'"completion_tokens"' not in data:
        return None
    prompt = _PROMPT.findall(data)
    completion = _COMPLETION.findall(data)
    if not completion:
        return None
    return (int(prompt[-1]) if prompt else 0), int(completion[-1])


class Counters:
    __slots__ = ("errors", "in_flight", "last_request", "requests", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.last_request: float | None = None  # monotonic seconds


class EndpointCounters(Counters):
    __slots__ = ("endpoint_id", "name", "owner", "peak", "queued")

    def __init__(self, endpoint_id: str, name: str, owner: str) -> None:
        super().__init__()
        self.endpoint_id = endpoint_id
        self.name = name
        self.owner = owner
        self.queued = 0
        self.peak = 0  # the most in flight + queued at once since the last collect

    def admitted(self) -> None:
        """One more request in flight."""
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight + self.queued)

    def held(self) -> None:
        """One more request waiting for a ready replica."""
        self.queued += 1
        self.peak = max(self.peak, self.in_flight + self.queued)


MINUTES_KEPT = 3  # minutes held in memory: the current one and those a late write may still carry


class Signals:
    """Per-endpoint counters, the token usage not yet written to the store, and this gateway's minutes
    of each deployment (requests, statuses, tokens, time to first byte and total time)."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointCounters] = {}
        self._usage: dict[tuple[str, str], list[int]] = {}
        self.minutes: dict[tuple[str, datetime], DeploymentMinute] = {}

    def observe(self, endpoint_id: str, at: datetime, status: int, first_ms: float | None, total_ms: float,
                tokens: tuple[int, int] | None) -> None:
        """One finished request of ``endpoint_id``, in the UTC minute of ``at``."""
        minute = at.replace(second=0, microsecond=0)
        m = self.minutes.get((endpoint_id, minute))
        if m is None:
            m = self.minutes[(endpoint_id, minute)] = DeploymentMinute(endpoint_id, minute, ttft=latency.empty(),
                                                                       latency=latency.empty())
        m.requests += 1
        if status >= 400:
            m.failures += 1
        m.statuses[str(status)] = m.statuses.get(str(status), 0) + 1
        if tokens is not None:
            m.tokens_in += tokens[0]
            m.tokens_out += tokens[1]
        if first_ms is not None:
            latency.add(m.ttft, first_ms)
        latency.add(m.latency, total_ms)

    def collect_minutes(self, now: datetime) -> list[DeploymentMinute]:
        """Every minute held (each gateway writes its whole count of a minute, again until it ends);
        minutes older than ``MINUTES_KEPT`` are written one last time and forgotten."""
        rows = list(self.minutes.values())
        horizon = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES_KEPT)
        self.minutes = {k: m for k, m in self.minutes.items() if m.minute > horizon}
        return rows

    def endpoint(self, endpoint_id: str, name: str, owner: str) -> EndpointCounters:
        c = self.endpoints.get(endpoint_id)
        if c is None:
            c = self.endpoints[endpoint_id] = EndpointCounters(endpoint_id, name, owner)
        return c

    def add_usage(self, ep: EndpointCounters, tokens_in: int, tokens_out: int) -> None:
        ep.tokens_in += tokens_in
        ep.tokens_out += tokens_out
        u = self._usage.get((ep.endpoint_id, ep.owner))
        if u is None:
            u = self._usage[(ep.endpoint_id, ep.owner)] = [0, 0, 0]
        u[0] += 1
        u[1] += tokens_in
        u[2] += tokens_out

    def collect(self, now: datetime, mono_now: float, known: Iterable[tuple[str, str, str]] = ()
                ) -> tuple[list[EndpointSignals], list[tuple[str, str, str, int, int, int]]]:
        """Rows for ``write_signals`` (every endpoint counted or ``known``) and the usage deltas, drained.

        ``known`` is (id, name, owner) of the endpoints in the routing table, so an idle one
        gets a row of zeros. Deltas are dated with ``now``'s UTC day; a caller whose write
        fails hands them back with ``restore``.
        """
        listed = set()
        for endpoint_id, name, owner in known:
            self.endpoint(endpoint_id, name, owner)
            listed.add(endpoint_id)
        rows = []
        for c in self.endpoints.values():
            last = None if c.last_request is None else now - timedelta(seconds=max(0.0, mono_now - c.last_request))
            rows.append(EndpointSignals(c.endpoint_id, c.in_flight, c.queued, c.requests, c.errors, c.tokens_in,
                                        c.tokens_out, last, now, peak_load=max(c.peak, c.in_flight + c.queued)))
            c.peak = c.in_flight + c.queued
        day = now.strftime("%Y-%m-%d")
        deltas = [(eid, owner, day, u[0], u[1], u[2]) for (eid, owner), u in self._usage.items()]
        self._usage = {}
        if listed:  # an endpoint gone from the table, and idle here, is written one last time and forgotten
            for eid in [e for e, c in self.endpoints.items() if e not in listed and not (c.in_flight or c.queued)]:
                del self.endpoints[eid]
        return rows, deltas

    def restore(self, deltas: Iterable[tuple[str, str, str, int, int, int]]) -> None:
        """Put back usage deltas whose write failed, so the next write carries them."""
        for eid, owner, _day, requests, tokens_in, tokens_out in deltas:
            u = self._usage.setdefault((eid, owner), [0, 0, 0])
            u[0] += requests
            u[1] += tokens_in
            u[2] += tokens_out


_ENDPOINT_FAMILIES = (
    ("in_flight", exposition.gauge, "Requests being served (not queued)."),
    ("queued", exposition.gauge, "Requests held for a ready replica."),
    ("requests_total", exposition.counter, "Requests accepted."),
    ("errors_total", exposition.counter, "Requests that ended in an error."),
    ("tokens_in_total", exposition.counter, "Prompt tokens (from the replicas' usage)."),
    ("tokens_out_total", exposition.counter, "Completion tokens (from the replicas' usage)."),
    ("last_request_timestamp_seconds", exposition.gauge, "Unix time of the last request."),
)
_REPLICA_FAMILIES = (
    ("in_flight", exposition.gauge, "Tries in progress on the replica."),
    ("requests_total", exposition.counter, "Tries sent to the replica."),
    ("errors_total", exposition.counter, "Tries that failed on the replica."),
    ("tokens_in_total", exposition.counter, "Prompt tokens served by the replica."),
    ("tokens_out_total", exposition.counter, "Completion tokens served by the replica."),
    ("ejected", exposition.gauge, "1 while the replica is ejected for failing."),
)


def families(signals: Signals, replicas: Iterable[Counters], mono_now: float, wall_now: float
             ) -> list[exposition.Metric]:
    """The gateway's metric families, read now: per endpoint (endpoint, name, owner) and per replica."""
    out: list[exposition.Metric] = []
    eps = sorted(signals.endpoints.values(), key=lambda c: c.endpoint_id)
    for name, family, help_ in _ENDPOINT_FAMILIES:
        samples: list[exposition.Sample] = []
        for c in eps:
            labels = (c.endpoint_id, c.name, c.owner)
            if name == "last_request_timestamp_seconds":
                if c.last_request is not None:
                    samples.append((labels, round(wall_now - (mono_now - c.last_request), 3)))
            else:
                samples.append((labels, getattr(c, name.removesuffix("_total"))))
        out.append(family(f"dedicate_gateway_endpoint_{name}", help_, ("endpoint", "name", "owner"), samples))
    reps = sorted(replicas, key=lambda r: str(getattr(r, "replica_id", "")))
    for name, family, help_ in _REPLICA_FAMILIES:
        samples = []
        for r in reps:
            ids = (str(getattr(r, "replica_id", "")), str(getattr(r, "endpoint_id", "")))
            if name == "ejected":
                samples.append((ids, int(float(getattr(r, "ejected_until", 0.0)) > mono_now)))
            else:
                samples.append((ids, getattr(r, name.removesuffix("_total"))))
        out.append(family(f"dedicate_gateway_replica_{name}", help_, ("replica", "endpoint"), samples))
    return out


def prometheus(signals: Signals, replicas: Iterable[Counters], mono_now: float, wall_now: float) -> str:
    """The gateway's metric families in Prometheus text format 0.0.4."""
    return exposition.render(families(signals, replicas, mono_now, wall_now))
