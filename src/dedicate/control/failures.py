"""Replica failures of an endpoint: the count that leads to ERROR, and the backoff before a new try."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from dedicate.domain.records import Endpoint, Replica
from dedicate.store.repos import Store


class Failures:
    """The backoff is in memory (a restart retries at once); the count is stored with the endpoint."""

    def __init__(self) -> None:
        self._until: dict[str, datetime] = {}

    def until(self, endpoint_id: str) -> datetime | None:
        return self._until.get(endpoint_id)

    def backing_off(self, endpoint_id: str, now: datetime) -> bool:
        until = self._until.get(endpoint_id)
        return until is not None and now < until

    def clear(self, endpoint_id: str) -> None:
        self._until.pop(endpoint_id, None)

    async def count(self, store: Store, ep: Endpoint, r: Replica, now: datetime, msg: str) -> None:
        """A replica of ``ep`` failed: back off ``min(60, 2^n)`` s; a failure before ready counts toward ERROR."""
        fresh = await asyncio.to_thread(store.get_endpoint, ep.id, include_deleted=True)
        if fresh is None:
            return
        failures = fresh.failures_before_ready + (1 if r.facts.first_ready_at is None else 0)
        self._until[ep.id] = now + timedelta(seconds=min(60.0, 2.0 ** max(failures, 1)))
        await asyncio.to_thread(store.update_endpoint, fresh, now, None,
                                failures_before_ready=failures, status_message=msg[:2000])
