"""Latency histograms: fixed buckets, so a minute of a deployment is a few numbers that add up.

Each gateway process counts its requests' time to first byte and total time per deployment and
UTC minute into these buckets; minutes from several processes, or over an hour or a day, merge
by adding counts. A percentile is read back by interpolating inside the bucket it falls in, so
it is exact to the bucket's width (the buckets grow by about 1.6× from 5 ms to 5 min).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

# upper bounds in milliseconds; one more bucket holds everything slower
BOUNDS_MS: tuple[float, ...] = (5, 10, 20, 30, 50, 80, 120, 200, 300, 500, 800, 1200, 2000, 3000, 5000, 8000,
                                12000, 20000, 30000, 60000, 120000, 300000)
SIZE = len(BOUNDS_MS) + 1


def bucket_of(ms: float) -> int:
    return bisect.bisect_left(BOUNDS_MS, ms)


def empty() -> list[int]:
    return [0] * SIZE


def add(counts: list[int], ms: float) -> None:
    counts[bucket_of(ms)] += 1


def merged(histograms: Iterable[Sequence[int]]) -> list[int]:
    out = empty()
    for h in histograms:
        for i, n in enumerate(h[:SIZE]):
            out[i] += n
    return out


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100) in ms, interpolated in its bucket; None without samples."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q / 100 * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            lo = BOUNDS_MS[i - 1] if i > 0 else 0.0
            hi = BOUNDS_MS[i] if i < len(BOUNDS_MS) else BOUNDS_MS[-1] * 2
            return lo + (hi - lo) * max(0.0, rank - seen) / n
        seen += n
    return BOUNDS_MS[-1] * 2
