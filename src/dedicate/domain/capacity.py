"""Memory fit: does a model fit a hardware shape?

The estimate (documented in docs/capacity.md):

    needed = weights + KV cache for one full context + overhead
    overhead = 10% of weights + 1 GiB (activations, CUDA context, fragmentation)
    usable  = 90% of the shape's total memory

A model fits a shape when ``needed <= usable``. It is deliberately
conservative: one full-length sequence must fit beside the weights, or the
engine would refuse long prompts.
"""

from __future__ import annotations

from dedicate.domain.hardware import Hardware
from dedicate.domain.models import ModelSpec

GIB = 1024**3
GB = 10**9
USABLE_FRACTION = 0.9


def memory_needed_bytes(model: ModelSpec) -> int:
    weights = model.weight_bytes
    kv = model.kv_bytes_per_token() * model.context_length
    overhead = weights // 10 + GIB
    return weights + kv + overhead


def usable_bytes(hardware: Hardware) -> int:
    return int(hardware.total_memory_gb * GB * USABLE_FRACTION)


def fits(model: ModelSpec, hardware: Hardware) -> bool:
    return memory_needed_bytes(model) <= usable_bytes(hardware)
