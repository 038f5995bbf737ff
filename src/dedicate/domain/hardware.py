"""Hardware shapes: GPU type × GPUs per replica, and their prices.

A shape id follows the managed providers' format
``{count}x_nvidia_{gpu}_{mem}gb_{link}`` (``2x_nvidia_h100_80gb_sxm``), or
``1x_cpu`` for one CPU slot. Everything else about a shape (its type, memory,
count) is derived from the id, so the id can never disagree with the specs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from dedicate.domain.errors import InvalidRequest

CPU_GPU_TYPE = "cpu"

_GPU_ID = re.compile(r"^(?P<count>[1-9]\d*)x_nvidia_(?P<gpu>[a-z0-9]+)_(?P<mem>\d+)gb_(?P<link>[a-z0-9]+)$")
_CPU_ID = re.compile(r"^(?P<count>[1-9]\d*)x_cpu$")


@dataclass(frozen=True)
class Hardware:
    """One replica shape with its price per replica-minute."""

    id: str
    gpu_type: str  # "h100-80gb", or "cpu"
    gpu_link: str  # "sxm", "pcie", or "none" for cpu
    gpu_memory_gb: int  # memory of one GPU (or one CPU slot)
    gpu_count: int
    cents_per_minute: Decimal
    engine: str  # which engine replicas of this shape run

    @property
    def is_cpu(self) -> bool:
        return self.gpu_type == CPU_GPU_TYPE

    @property
    def total_memory_gb(self) -> int:
        return self.gpu_memory_gb * self.gpu_count


@dataclass(frozen=True)
class ShapeId:
    gpu_type: str
    gpu_link: str
    gpu_memory_gb: int | None  # None for cpu: the slot size comes from the node
    gpu_count: int


def parse_hardware_id(hardware_id: str) -> ShapeId:
    """Split a shape id into its parts, or say what a valid id looks like."""
    m = _GPU_ID.fullmatch(hardware_id)
    if m:
        mem = int(m["mem"])
        return ShapeId(
            gpu_type=f"{m['gpu']}-{mem}gb",
            gpu_link=m["link"],
            gpu_memory_gb=mem,
            gpu_count=int(m["count"]),
        )
    m = _CPU_ID.fullmatch(hardware_id)
    if m:
        return ShapeId(gpu_type=CPU_GPU_TYPE, gpu_link="none", gpu_memory_gb=None, gpu_count=int(m["count"]))
    raise InvalidRequest(
        f"invalid hardware provided: {hardware_id!r} is not a hardware id; ids look like "
        "'1x_nvidia_h100_80gb_sxm' or '1x_cpu' (list them with GET /v1/hardware)",
        param="hardware",
    )


def gpu_hardware_id(gpu_type: str, gpu_link: str, count: int) -> str:
    """The shape id for ``count`` GPUs of ``gpu_type`` ("h100-80gb")."""
    name, _, mem = gpu_type.partition("-")
    return f"{count}x_nvidia_{name}_{mem}_{gpu_link}"
