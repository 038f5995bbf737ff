"""Per-key and per-owner limits: request rate (token bucket) and concurrency.

A key may make ``key_rps`` requests a second on average, ``key_burst`` at
once, with at most ``key_concurrency`` in progress; all keys of one owner
together at most ``owner_rps`` / ``owner_burst`` / ``owner_concurrency``.
0 means no limit. Over a limit the answer is 429 ``rate_limit_exceeded``
with ``Retry-After``: the time until the bucket has a token again, or one
second for a concurrency limit. A refused request costs nothing: no token is
taken from the other bucket, no slot is held.

Limits are per gateway process: behind a load balancer of N gateways a
client can reach N times them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dedicate.domain.errors import RateLimited


@dataclass(frozen=True)
class Limits:
    key_rps: float = 0.0
    key_burst: int = 0  # 0: max(1, rps)
    key_concurrency: int = 0
    owner_rps: float = 0.0
    owner_burst: int = 0
    owner_concurrency: int = 0

    @property
    def any(self) -> bool:
        return bool(self.key_rps or self.key_concurrency or self.owner_rps or self.owner_concurrency)


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class _Rate:
    def __init__(self, rps: float, burst: int) -> None:
        self.rps = rps
        self.burst = float(burst or max(1, math.ceil(rps)))
        self.buckets: dict[str, _Bucket] = {}

    def wait_s(self, who: str, now: float) -> float:
        """0 if ``who`` has a token now (not taken yet), else seconds until one."""
        b = self.buckets.get(who)
        if b is None:
            return 0.0
        tokens = min(self.burst, b.tokens + (now - b.at) * self.rps)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rps

    def take(self, who: str, now: float) -> None:
        b = self.buckets.get(who)
        if b is None:
            if len(self.buckets) > 100_000:  # forget full buckets: they are the same as new ones
                self.buckets = {k: v for k, v in self.buckets.items()
                                if v.tokens + (now - v.at) * self.rps < self.burst}
            self.buckets[who] = _Bucket(self.burst - 1.0, now)
            return
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rps) - 1.0
        b.at = now


class Limiter:
    def __init__(self, limits: Limits, monotonic: Callable[[], float]) -> None:
        self.limits = limits
        self.monotonic = monotonic
        self._key_rate = _Rate(limits.key_rps, limits.key_burst) if limits.key_rps > 0 else None
        self._owner_rate = _Rate(limits.owner_rps, limits.owner_burst) if limits.owner_rps > 0 else None
        self.key_active: dict[str, int] = {}
        self.owner_active: dict[str, int] = {}

    def admit(self, key_id: str, owner: str) -> Callable[[], None]:
        """Take a request slot for this key and owner, or raise ``RateLimited``; returns the release."""
        lim = self.limits
        if lim.key_concurrency and self.key_active.get(key_id, 0) >= lim.key_concurrency:
            raise RateLimited(f"this API key already has {lim.key_concurrency} requests in progress, its limit; "
                              "wait for one to finish", retry_after_s=1)
        if lim.owner_concurrency and self.owner_active.get(owner, 0) >= lim.owner_concurrency:
            raise RateLimited(f"owner {owner} already has {lim.owner_concurrency} requests in progress over "
                              "all its keys, its limit; wait for one to finish", retry_after_s=1)
        now = self.monotonic()
        for rate, who, what in ((self._key_rate, key_id, "this API key"), (self._owner_rate, owner, f"owner {owner}")):
            if rate is not None and (wait := rate.wait_s(who, now)) > 0:
                raise RateLimited(f"{what} is limited to {rate.rps:g} requests a second; retry in {wait:.1f} s",
                                  retry_after_s=wait)
        if self._key_rate is not None:
            self._key_rate.take(key_id, now)
        if self._owner_rate is not None:
            self._owner_rate.take(owner, now)
        self.key_active[key_id] = self.key_active.get(key_id, 0) + 1
        self.owner_active[owner] = self.owner_active.get(owner, 0) + 1
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            for table, who in ((self.key_active, key_id), (self.owner_active, owner)):
                n = table[who] - 1
                if n:
                    table[who] = n
                else:
                    del table[who]

        return release
