"""Rows read once and kept while they do not change: what makes a pass over 10,000 replicas cheap.

A reconcile pass reads every live replica and every active endpoint, and almost none of
them changed since the previous pass. Building a record costs far more than reading the
row's identity, so a ``RowCache`` keeps each record with the *key* it was read at: the
row's ``version`` (every guarded write bumps it) and the few columns that move without a
version, in place (a replica's last good probe, an endpoint's last request). A read asks
the database for the keys alone, in the caller's order, and builds records only for the
rows whose key is new; the rest come from the cache. It is always the database that says
what is current, so a write by any process (another server on the same database) is seen
by the next read: nothing here is invalidated by hand.

The keys are compared opaquely (a backend's raw column value will do). One cache is
shared by a store and its fenced views, and by the threads that call them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class RowCache(Generic[T]):
    def __init__(self, max_rows: int | None = None) -> None:
        self._rows: dict[str, tuple[Hashable, T]] = {}
        self._lock = threading.Lock()
        self._max_rows = max_rows  # past it, rows the read did not ask for are forgotten

    def read(self, keys: Sequence[tuple[str, Hashable]], fetch: Callable[[list[str]], Iterable[tuple[str, T]]],
             *, complete: bool = False) -> list[T]:
        """The records of ``keys`` ((id, key) pairs, in the order wanted), fetching only what changed.

        ``fetch(ids)`` builds the records of those ids from their current rows. A row that
        changed again between the two reads is kept with its older key, so the next read
        fetches it once more; a row gone in between is left out. ``complete``: ``keys`` are
        all the rows this cache is for, and the others are forgotten.
        """
        out: list[T | None] = []
        stale: list[str] = []
        with self._lock:
            rows = self._rows
            for rid, key in keys:
                got = rows.get(rid)
                if got is not None and got[0] == key:
                    out.append(got[1])
                else:
                    stale.append(rid)
                    out.append(None)
        if stale:
            fresh = dict(fetch(stale))
            wanted = dict(keys)
            with self._lock:
                for rid, record in fresh.items():
                    self._rows[rid] = (wanted[rid], record)
            out = [fresh.get(rid) if record is None else record for (rid, _), record in zip(keys, out, strict=True)]
        with self._lock:
            full = self._max_rows is not None and len(self._rows) > self._max_rows
            if (complete or full) and len(self._rows) > len(keys):  # forget rows that left (stopped, deleted)
                ids = {rid for rid, _ in keys}
                self._rows = {rid: v for rid, v in self._rows.items() if rid in ids}
        return [record for record in out if record is not None]

    def clear(self) -> None:
        with self._lock:
            self._rows = {}
