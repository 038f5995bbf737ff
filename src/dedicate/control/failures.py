"""Replica failures of an endpoint: the count that leads to ERROR, and the backoff before a new try."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

from dedicate.domain.records import Endpoint, Replica
from dedicate.store.repos import EndpointWrite, Store


class Failures:
    """The backoff is in memory (a restart retries at once); the count is stored with the endpoint."""

    def __init__(self) -> None:
        self._until: dict[str, datetime] = {}
        self._why: dict[str, str] = {}  # a hold's reason, where it is not a failure

    def why(self, endpoint_id: str) -> str | None:
        """Why the endpoint is held back without a failure (the runtime could not place it), if it is."""
        return self._why.get(endpoint_id)

    def hold(self, endpoint_id: str, now: datetime, seconds: float, why: str) -> None:
        """Hold back new replicas of the endpoint for ``seconds``, for a reason that is not a failure."""
        self._until[endpoint_id] = max(self._until.get(endpoint_id, now), now + timedelta(seconds=seconds))
        self._why[endpoint_id] = why

    def until(self, endpoint_id: str) -> datetime | None:
        return self._until.get(endpoint_id)

    def backing_off(self, endpoint_id: str, now: datetime) -> bool:
        until = self._until.get(endpoint_id)
        return until is not None and now < until

    def clear(self, endpoint_id: str) -> None:
        self._until.pop(endpoint_id, None)
        self._why.pop(endpoint_id, None)

    async def count(self, store: Store, ep: Endpoint, r: Replica, now: datetime, msg: str) -> None:
        """A replica of ``ep`` failed: back off ``min(60, 2^n)`` s; a failure before ready counts toward ERROR."""
        await self.count_all(store, [(ep, r, msg)], now)

    async def count_all(self, store: Store, failed: Sequence[tuple[Endpoint, Replica, str]], now: datetime) -> None:
        """Replicas that failed (a pass's worth), counted per endpoint in one read and one write."""
        by_endpoint: dict[str, list[tuple[Replica, str]]] = {}
        for ep, r, msg in failed:
            by_endpoint.setdefault(ep.id, []).append((r, msg))
        writes = []
        for fresh in await asyncio.to_thread(store.endpoints_by_id, by_endpoint):
            mine = by_endpoint[fresh.id]
            failures = fresh.failures_before_ready + sum(1 for r, _ in mine if r.facts.first_ready_at is None)
            self._until[fresh.id] = now + timedelta(seconds=min(60.0, 2.0 ** max(failures, 1)))
            self._why.pop(fresh.id, None)
            writes.append(EndpointWrite(fresh, None, None, {"failures_before_ready": failures,
                                                            "status_message": mine[-1][1][:2000]}))
        await asyncio.to_thread(store.settle_endpoints, writes, now)
