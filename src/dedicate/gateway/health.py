"""Passive health: a replica that keeps failing is left out for a while, longer each time.

A failure is what the gateway saw itself: no connection, a reset or a timeout
before the answer, a 5xx, a stream cut short. ``failures_to_eject`` of them in
a row eject the replica for ``base_s``, doubling with each ejection in a row
up to ``max_s``. Once the time is up the replica is tried again: a success
clears its record; a failure ejects it at once, for twice as long.

The caller says whether ejection is allowed: the routing table never ejects
the last replica of an endpoint that is not ejected, so an endpoint is never
left with nothing to try.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Health(Protocol):
    consecutive_failures: int
    ejections: int
    ejected_until: float


@dataclass(frozen=True)
class HealthPolicy:
    failures_to_eject: int = 3
    base_s: float = 1.0
    max_s: float = 30.0

    def on_success(self, h: Health, now: float) -> None:
        h.consecutive_failures = 0
        if h.ejections and now >= h.ejected_until:
            h.ejections = 0

    def on_failure(self, h: Health, now: float, *, may_eject: bool) -> bool:
        """Count one failure; True if it ejects the replica (until ``h.ejected_until``)."""
        h.consecutive_failures += 1
        if h.consecutive_failures < self.failures_to_eject or now < h.ejected_until or not may_eject:
            return False
        h.ejections += 1
        h.ejected_until = now + min(self.max_s, self.base_s * 2 ** (h.ejections - 1))
        return True
