"""The reconciler lease and its heartbeat: who may act, and the fenced store they act through.

Several servers may share one database; only the holder of the lease row
``reconciler`` reconciles and autoscales. The holder is
``<instance id>:<host>:<pid>:<nonce>``; the lease lasts ``ttl_s`` of the injected
clock and is renewed by a heartbeat task of its own, so a long pass (a slow
probe, a slow disk) cannot starve it. Taking the lease from another holder
moves its token on; while held, writes go through ``Store.fenced(name,
token)``, which refuses them once the token has moved (``StaleLease``). A
server whose earlier process of the same instance on the same machine died
holds the lease at once instead of waiting it out (a pid means nothing on
another machine: servers of one installation on a Ray cluster share its id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

from dedicate.clock import Clock
from dedicate.store.repos import Store

log = logging.getLogger("dedicate.lease")

LEASE = "reconciler"
HOST = socket.gethostname().replace(":", "-")[:48]

OnAcquired = Callable[[Store], Awaitable[None]]


def lease_ttl_s(reconcile_interval_s: float) -> float:
    return max(10.0, 5 * reconcile_interval_s)


class LeaseKeeper:
    def __init__(self, store: Store, clock: Clock, instance: str, ttl_s: float,
                 on_acquired: OnAcquired | None = None, heartbeat_s: float | None = None) -> None:
        self.base_store = store
        self.store = store  # the fenced view while the lease is held
        self.clock = clock
        self.instance = instance
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else ttl_s / 4
        # instance:host:pid:nonce — unique even for two processes with the same pid (containers).
        self.holder = f"{instance}:{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.token: int | None = None
        self.is_leader = False
        self._on_acquired = on_acquired
        self._lock = asyncio.Lock()

    async def hold(self) -> bool:
        """Take or renew the lease now; whether this process holds it."""
        async with self._lock:
            now = self.clock.now()
            current = await asyncio.to_thread(self.base_store.lease, LEASE)
            steal = None
            if current is not None and current[0] != self.holder and self._holder_dead(current[0]):
                steal = current[0]  # our own instance's earlier process, gone: no need to wait it out
            token = await asyncio.to_thread(self.base_store.acquire_lease, LEASE, self.holder, now,
                                            self.ttl_s, steal)
            if token is None:
                self.lost()
                return False
            if token != self.token:
                self.token = token
                self.store = self.base_store.fenced(LEASE, token)
                log.info("holding the reconciler lease (token %s)", token)
                if self._on_acquired is not None:
                    await self._on_acquired(self.store)
            self.is_leader = True
            return True

    def lost(self) -> None:
        """The lease moved on (a fenced write said so, or a renewal failed): stand by."""
        self.token, self.is_leader, self.store = None, False, self.base_store

    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Renew the lease every ``heartbeat_s`` while held, whatever the passes are doing."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_s)
            if stop.is_set() or not self.is_leader:
                continue
            try:
                await self.hold()
            except Exception:  # a failed renewal is retried; the lease outlives a few of them
                log.exception("renewing the reconciler lease failed")

    async def release(self) -> None:
        if self.is_leader:
            await asyncio.to_thread(self.base_store.release_lease, LEASE, self.holder)
        self.lost()

    def _holder_dead(self, holder: str) -> bool:
        """Whether the lease holder is an earlier process of this instance on this machine, now gone."""
        parts = holder.split(":")
        if len(parts) != 4:
            return False
        instance, host, pid, _ = parts
        if instance != self.instance or host != HOST or not pid.isdigit() or int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
