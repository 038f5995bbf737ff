"""Replica status, derived from recorded facts by one pure function.

A replica's status is never stored: it is computed from the times things
were observed to happen, so it cannot drift from them. Billing reads the
same facts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class ReplicaStatus(enum.StrEnum):
    QUEUED = "queued"  # wants a place, has none yet
    PLACED = "placed"  # has a place, process not launched yet
    STARTING = "starting"  # process launched, not yet ready
    READY = "ready"  # passed its probe and not failing
    STOPPING = "stopping"  # asked to stop
    STOPPED = "stopped"  # gone
    FAILED = "failed"  # gone without being asked to


@dataclass(frozen=True)
class ReplicaFacts:
    placed_at: datetime | None
    launched_at: datetime | None
    first_ready_at: datetime | None
    last_probe_ok_at: datetime | None
    probe_failures: int
    exit_code: int | None
    stop_requested_at: datetime | None
    stopped_at: datetime | None


def replica_status(f: ReplicaFacts) -> ReplicaStatus:
    if f.stopped_at is not None:
        return ReplicaStatus.STOPPED if f.stop_requested_at is not None else ReplicaStatus.FAILED
    if f.stop_requested_at is not None:
        return ReplicaStatus.STOPPING
    # A few failed probes in a row do not unroute a replica: the reconciler asks
    # it to stop once failures reach its threshold, and then it is STOPPING.
    if f.first_ready_at is not None:
        return ReplicaStatus.READY
    if f.launched_at is not None:
        return ReplicaStatus.STARTING
    if f.placed_at is not None:
        return ReplicaStatus.PLACED
    return ReplicaStatus.QUEUED
