"""An endpoint's counts, next state and status message: one pure function, used everywhere.

The reconciler writes what this computes; the API shows the counts it computes
from the same replicas; the autoscaler reads the same counts. Before it existed,
three places counted and disagreed (for an endpoint in ERROR, say, whose
desired count the reconciler took as 0 and the API showed as the user's).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from dedicate.domain.endpoints import EndpointState, ReplicaCounts, next_state
from dedicate.domain.records import Endpoint, Replica
from dedicate.domain.replicas import ReplicaStatus


@dataclass(frozen=True)
class Waiting:
    """What the capacity plan and the failure backoff say of one endpoint in this pass."""

    queued: int = 0  # replicas wanted that have no place
    position: int | None = None  # its minimum's place in its pool's queue (1 = next)
    why: str = "waiting for capacity"  # why replicas wait, in words
    backoff_until: datetime | None = None  # no new replica before this, after failures
    preparing: str | None = None  # the model weights being prepared for its replicas, in words
    held: str | None = None  # why new replicas are held back, where it is not a failure


@dataclass(frozen=True)
class EndpointStatus:
    counts: ReplicaCounts
    state: EndpointState
    message: str


def replica_counts(ep: Endpoint, replicas: Iterable[Replica], queued: int = 0) -> ReplicaCounts:
    """How many of ``ep``'s replicas are ready, starting, stopping, and how many it should have."""
    ready = starting = stopping = 0
    for r in replicas:  # a plain loop: a pass counts every endpoint's replicas
        s = r.status
        if s is ReplicaStatus.READY:
            ready += 1
        elif s is ReplicaStatus.STARTING or s is ReplicaStatus.PLACED:
            starting += 1
        elif s is ReplicaStatus.STOPPING:
            stopping += 1
    run = ep.should_run
    return ReplicaCounts(desired=ep.within_bounds(ep.desired_replicas) if run else 0, ready=ready,
                         starting=starting, queued=queued if run else 0, stopping=stopping)


def endpoint_status(ep: Endpoint, replicas: Iterable[Replica], waiting: Waiting, *, shape: str,
                    max_failures: int, now: datetime) -> EndpointStatus:
    """The counts, the state the endpoint should move to, and its message (``shape``: "8x h100-80gb")."""
    counts = replica_counts(ep, replicas, waiting.queued)
    state = next_state(ep.state, ep.intent, ep.min_replicas, counts, ep.failures_before_ready, max_failures)
    return EndpointStatus(counts, state, status_message(ep, state, counts, waiting, shape=shape, now=now))


def status_message(ep: Endpoint, state: EndpointState, c: ReplicaCounts, w: Waiting, *, shape: str,
                   now: datetime) -> str:
    if state is EndpointState.ERROR:
        return ep.status_message if ep.status_message.startswith("error") else \
            f"error: replicas failed {ep.failures_before_ready} times before becoming ready; " \
            f"last: {ep.status_message}; fix the cause and start the endpoint again"
    if state is EndpointState.STOPPED:
        return "stopped"
    if state is EndpointState.STOPPING:
        return f"stopping {c.live} replica(s)"
    if w.position is not None and w.position > 0:
        return f"queued: position {w.position} for {c.queued} replica(s) of {shape}; {w.why}"
    if c.desired == 0 and c.live == 0 and not c.queued:
        return "scaled to zero: no replica runs and nothing is billed; the next request starts one"
    parts = [f"{c.ready} of {c.desired} replicas ready"]
    if c.starting:
        parts.append(f"{c.starting} starting" + (f": {w.preparing}" if w.preparing else ""))
    if c.queued:
        parts.append(f"{c.queued} queued: {w.why}")
    if w.backoff_until is not None and now < w.backoff_until and c.ready < c.desired:
        wait = (w.backoff_until - now).total_seconds()
        parts.append(f"{w.held}; retrying in {wait:.0f} s" if w.held else
                     f"retrying in {wait:.0f} s after {ep.failures_before_ready} failure(s)")
    return "; ".join(parts)
