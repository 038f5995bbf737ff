"""API-key checks on the request path, cached for at most ``ttl_s`` (≤ 1 s).

The cache is keyed by the SHA-256 of the bearer token (the secret itself is
never kept) and holds the answer: a principal, or the 401 to raise. So a key
revoked through another process fails within ``ttl_s``; a key revoked through
this process fails at once, because the server calls ``forget(key_id)``
when the API revokes it. Concurrent misses for one token share one lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

from dedicate.control.auth import Principal
from dedicate.domain.errors import Unauthorized

Lookup = Callable[[str | None], Principal]


class KeyCache:
    def __init__(self, lookup: Lookup, monotonic: Callable[[], float], ttl_s: float = 1.0) -> None:
        self.lookup = lookup
        self.monotonic = monotonic
        self.ttl_s = min(ttl_s, 1.0)
        self._cache: dict[bytes, tuple[float, Principal | Unauthorized]] = {}
        self._pending: dict[bytes, asyncio.Future[Principal | Unauthorized]] = {}
        self._forgotten = 0  # moves at each forget: a look-up begun before one is not cached

    async def principal(self, authorization: str | None) -> Principal:
        if not authorization:
            return self.lookup(None)  # raises the 401 that says how to authenticate; no I/O
        digest = hashlib.sha256(authorization.encode()).digest()
        hit = self._cache.get(digest)
        now = self.monotonic()
        if hit is not None and hit[0] > now:
            answer = hit[1]
            if hit[0] - now < self.ttl_s / 2 and digest not in self._pending:
                # refresh ahead, so a busy key never waits for the database
                ahead = self._pending[digest] = asyncio.ensure_future(self._look_up(authorization, digest))
                ahead.add_done_callback(_consume)
        else:
            pending = self._pending.get(digest)
            if pending is None:
                pending = self._pending[digest] = asyncio.ensure_future(self._look_up(authorization, digest))
            answer = await asyncio.shield(pending)
        if isinstance(answer, Unauthorized):
            raise Unauthorized(answer.message)
        return answer

    async def _look_up(self, authorization: str, digest: bytes) -> Principal | Unauthorized:
        began = self._forgotten
        try:
            try:
                answer: Principal | Unauthorized = await asyncio.to_thread(self.lookup, authorization)
            except Unauthorized as exc:
                answer = exc
            if began != self._forgotten:  # it may have read a key revoked meanwhile: answer, keep nothing
                return answer
            if len(self._cache) > 50_000:
                now = self.monotonic()
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[digest] = (self.monotonic() + self.ttl_s, answer)
            return answer
        finally:
            del self._pending[digest]

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached answers for one key (revoked here), or all of them."""
        self._forgotten += 1
        if key_id is None:
            self._cache.clear()
            return
        for digest in [d for d, (_, a) in self._cache.items() if isinstance(a, Principal) and a.key_id == key_id]:
            del self._cache[digest]


def _consume(fut: asyncio.Future[Principal | Unauthorized]) -> None:
    """A failed look-ahead is retried by the next request once the answer expires."""
    if not fut.cancelled():
        fut.exception()
