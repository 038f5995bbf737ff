"""What an engine's ``/metrics`` page says about how full it is: requests waiting, KV-cache use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSample:
    waiting: int | None = None  # requests waiting for a generation slot
    kv_cache_usage: float | None = None  # 0..1


WAITING = ("dedicate_engine_requests_waiting", "vllm:num_requests_waiting")
KV_USAGE = ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc")


def parse_engine_metrics(text: str) -> EngineSample:
    """The waiting count and KV-cache use from a Prometheus text page (dedicate's or vLLM's names)."""
    waiting: float | None = None
    kv: float | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        base = name.split("{", 1)[0]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        if base in WAITING:
            waiting = (waiting or 0.0) + value
        elif base in KV_USAGE:
            kv = max(kv or 0.0, value)
    return EngineSample(None if waiting is None else int(waiting), kv)
