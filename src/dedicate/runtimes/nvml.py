"""NVIDIA GPU discovery for the local runtime, through NVML (the ``pynvml`` module of nvidia-ml-py).

``discover_gpus`` asks NVML for this machine's GPUs and maps each one to a
catalog gpu_type ("h100-80gb"); ``gpu_nodes`` groups them into nodes, one per
GPU type. A machine without NVIDIA GPUs (no driver, no library, no package)
simply has none: every NVML failure is logged at info level and gives ``[]``.

Slots and devices: the scheduler numbers a node's slots 0..slots-1. A
``GpuNode`` records which NVML device index each slot is, so a replica on
slots (0, 1) of the L40S node of a machine that mixes A100s and L40Ss runs
on the NVML devices ``visible_devices`` names. NVML numbers devices in PCI
bus order; CUDA numbers them fastest first unless ``CUDA_DEVICE_ORDER`` is
``PCI_BUS_ID``, so ``gpu_env`` sets both variables.

Run ``python -m dedicate.runtimes.nvml`` to see what this machine reports,
``--record`` to print it as a test fixture (tests/runtimes/fixtures).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dedicate.domain.catalog import DEFAULT_GPU_PRICES
from dedicate.domain.hardware import gpu_hardware_id
from dedicate.runtimes.base import Node

log = logging.getLogger(__name__)

GIB = 1024**3
# How far the memory NVML reports may be from a catalog size of the same family
# (an L40S reports 45.0 GiB for its nominal 48, a B200 179 GiB for its 192).
MEMORY_TOLERANCE = 0.10
DEFAULT_NODE_NAME = "local-gpu"

# Name tokens that say nothing about the GPU model.
_VENDOR_TOKENS = frozenset({"nvidia", "tesla", "geforce", "quadro", "generation"})
_NOISE_TOKEN = re.compile(r"^(\d+gb|hbm\d*e?|pcie|sxm\d*)$")


class NvmlLike(Protocol):
    """The part of the ``pynvml`` module discovery uses; tests pass a recorded fake."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None: ...

    def nvmlDeviceGetCount(self) -> int: ...

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...

    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...  # has .total, in bytes

    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any: ...  # has .busId


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reported it, with the catalog gpu_type it counts as."""

    index: int  # NVML index: what CUDA_VISIBLE_DEVICES names (with CUDA_DEVICE_ORDER=PCI_BUS_ID)
    name: str  # "NVIDIA H100 80GB HBM3"
    memory_bytes: int  # total memory, as nvmlDeviceGetMemoryInfo reports it
    uuid: str  # "GPU-..."
    pci_bus_id: str | None  # "00000000:1B:00.0"
    gpu_type: str  # "h100-80gb"; a derived "<family>-<GiB>gb" when not in the catalog
    known: bool  # gpu_type is one of the catalog's

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


@dataclass(frozen=True)
class GpuNode(Node):
    """A discovered node of one GPU type; ``devices[slot]`` is that slot's NVML index."""

    devices: tuple[int, ...] = ()


# mapping names and memory to gpu types ------------------------------------------------------------


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def _family_slug(name: str) -> str:
    """The model part of a device name, as one [a-z0-9]+ word: "NVIDIA GeForce RTX 4090" → "rtx4090"."""
    kept = [t for t in _tokens(name) if t not in _VENDOR_TOKENS and not _NOISE_TOKEN.match(t)]
    return "".join(kept) or "gpu"


def _catalog_sizes(gpu_types: Iterable[str]) -> dict[str, list[int]]:
    """Family → its catalog memory sizes: {"h100": [80], ...}."""
    sizes: dict[str, list[int]] = {}
    for t in gpu_types:
        family, _, mem = t.partition("-")
        if mem.endswith("gb") and mem[:-2].isdigit():
            sizes.setdefault(family, []).append(int(mem[:-2]))
    return sizes


def gpu_type_for(name: str, memory_bytes: int, gpu_types: Iterable[str] | None = None) -> tuple[str, bool]:
    """The gpu_type of a device, and whether it is one of ``gpu_types`` (default: the built-in catalog's).

    The family is a whole word of the name ("NVIDIA A100-SXM4-80GB" → a100; "GH200" is
    not "H200"); the memory is rounded to the family's nearest catalog size when it is
    within ``MEMORY_TOLERANCE`` of it. Otherwise the type is derived:
    ``<family>-<GiB rounded>gb`` ("a100-40gb", "rtx4090-24gb").
    """
    sizes = _catalog_sizes(DEFAULT_GPU_PRICES if gpu_types is None else gpu_types)
    words = _tokens(name)
    slug = _family_slug(name)
    family = next((f for f in words if f in sizes), slug)
    gib = memory_bytes / GIB
    candidates = sorted(sizes.get(family, ()), key=lambda size: abs(size - gib))
    if candidates and abs(candidates[0] - gib) <= MEMORY_TOLERANCE * candidates[0]:
        return f"{family}-{candidates[0]}gb", True
    return f"{family}-{round(gib)}gb", False


# asking NVML ------------------------------------------------------------------------------------


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _load_pynvml() -> NvmlLike | None:
    try:
        import pynvml  # nvidia-ml-py: pure Python, loads libnvidia-ml.so.1 only at nvmlInit
    except ImportError as exc:
        log.info("no GPU discovery: the pynvml module (package nvidia-ml-py) is missing: %s", exc)
        return None
    module: NvmlLike = pynvml
    return module


def _device(nvml: NvmlLike, index: int, gpu_types: Iterable[str] | None) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(nvml.nvmlDeviceGetName(handle))
    memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    uuid = _text(nvml.nvmlDeviceGetUUID(handle))
    try:
        bus_id: str | None = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
    except nvml.NVMLError:
        bus_id = None
    gpu_type, known = gpu_type_for(name, memory, gpu_types)
    return GpuInfo(index, name, memory, uuid, bus_id, gpu_type, known)


def discover_gpus(nvml: NvmlLike | None = None, gpu_types: Iterable[str] | None = None) -> list[GpuInfo]:
    """This machine's NVIDIA GPUs in NVML index order; ``[]`` when NVML is missing or fails.

    ``gpu_types`` are the catalog's types to map devices to (default: the built-in ones).
    Never raises: a server on a machine without GPUs must start all the same.
    """
    if nvml is None:
        nvml = _load_pynvml()
        if nvml is None:
            return []
    try:
        return _discover(nvml, None if gpu_types is None else list(gpu_types))
    except (nvml.NVMLError, OSError) as exc:
        log.info("no GPU discovery: NVML is not available (%s: %s)", type(exc).__name__, exc)
    except Exception:
        log.warning("no GPU discovery: asking NVML failed", exc_info=True)
    return []


def _discover(nvml: NvmlLike, gpu_types: list[str] | None) -> list[GpuInfo]:
    nvml.nvmlInit()
    found: list[GpuInfo] = []
    try:
        for index in range(int(nvml.nvmlDeviceGetCount())):
            try:
                info = _device(nvml, index, gpu_types)
            except nvml.NVMLError as exc:
                # The other devices keep their NVML indices, so they stay usable.
                log.warning("GPU %d: NVML cannot read it (%s: %s); it is left out",
                            index, type(exc).__name__, exc)
                continue
            found.append(info)
            log.info("GPU %d: %s, %.1f GiB, %s, as %s", info.index, info.name, info.memory_gib,
                     info.uuid, info.gpu_type)
            if not info.known:
                log.warning("GPU %d (%s, %.1f GiB) is no catalog GPU type; it is offered as %s, which needs "
                            "hardware shapes in the config ([[hardware]] id = %r)", info.index, info.name,
                            info.memory_gib, info.gpu_type, gpu_hardware_id(info.gpu_type, "pcie", 1))
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            log.debug("nvmlShutdown failed: %s", exc)
    if not found:
        log.info("NVML reports no GPUs on this machine")
    return found


# nodes ------------------------------------------------------------------------------------------


def gpu_nodes(infos: Sequence[GpuInfo], node_name: str = DEFAULT_NODE_NAME) -> list[Node]:
    """One node per GPU type: ``node_name`` when the machine has one type, else ``local-<gpu_type>``.

    Nodes come in the order of their first device; each records its devices' NVML indices.
    """
    by_type: dict[str, list[int]] = {}
    for info in sorted(infos, key=lambda i: i.index):
        by_type.setdefault(info.gpu_type, []).append(info.index)
    single = len(by_type) == 1
    return [
        GpuNode(node_name if single else f"local-{gpu_type}", gpu_type, len(indices),
                declared=False, engine=None, devices=tuple(indices))
        for gpu_type, indices in by_type.items()
    ]


def visible_devices(node: Node, slots: Iterable[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a replica on ``slots`` of ``node``: the slots' NVML indices.

    A node that records no devices (a plain ``Node``) has slot i on device i.
    """
    slots = list(slots)
    if not isinstance(node, GpuNode):
        return ",".join(str(s) for s in slots)
    bad = [s for s in slots if not 0 <= s < len(node.devices)]
    if bad:
        raise ValueError(f"node {node.name} has slots 0..{len(node.devices) - 1}, not {bad}")
    return ",".join(str(node.devices[s]) for s in slots)


def gpu_env(node: Node, slots: Iterable[int]) -> dict[str, str]:
    """The environment that pins a replica to its slots' GPUs (NVML and CUDA numbering agreeing)."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": visible_devices(node, slots)}


def discovered_nodes(
    discover: bool, gpu_types: Iterable[str] | None = None, nvml: NvmlLike | None = None
) -> list[Node]:
    """The GPU nodes the server adds when the config declares none (none with ``[gpu] discover = false``)."""
    if not discover:
        log.info("GPU discovery is off ([gpu] discover = false)")
        return []
    return gpu_nodes(discover_gpus(nvml, gpu_types))


# recording --------------------------------------------------------------------------------------


def record(nvml: Any) -> dict[str, Any]:
    """What NVML answers, in the fixture format the tests replay (raises NVMLError on failure)."""
    nvml.nvmlInit()
    try:
        out: dict[str, Any] = {"driver_version": _text(nvml.nvmlSystemGetDriverVersion()),
                               "nvml_version": _text(nvml.nvmlSystemGetNVMLVersion()),
                               "cuda_driver_version": int(nvml.nvmlSystemGetCudaDriverVersion()),
                               "devices": []}
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            out["devices"].append({
                "index": index,
                "name": _text(nvml.nvmlDeviceGetName(handle)),
                "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                "pci_bus_id": _text(nvml.nvmlDeviceGetPciInfo(handle).busId),
                "memory": {"total": int(memory.total), "free": int(memory.free), "used": int(memory.used)},
            })
        return out
    finally:
        nvml.nvmlShutdown()


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if "--record" in argv:
        import pynvml

        print(json.dumps(record(pynvml), indent=2))
        return 0
    infos = discover_gpus()
    for info in infos:
        print(info)
    for node in gpu_nodes(infos):
        print(node)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
