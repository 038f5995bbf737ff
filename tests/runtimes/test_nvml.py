"""GPU discovery through NVML, replayed from recorded NVML answers (no GPU needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dedicate.runtimes import nvml
from dedicate.runtimes.base import Node
from dedicate.runtimes.nvml import (
    GpuInfo,
    GpuNode,
    discover_gpus,
    discovered_nodes,
    gpu_env,
    gpu_nodes,
    gpu_type_for,
    visible_devices,
)

FIXTURES = Path(__file__).parent / "fixtures"
GIB = 1024**3
MIB = 1024**2


class NVMLError(Exception):
    """Stands in for pynvml.NVMLError: carries an NVML return code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {12: "NVML Shared Library Not Found", 9: "Driver Not Loaded", 15: "GPU is lost"}.get(
            self.value, f"NVML error {self.value}")


class ReplayNvml:
    """The pynvml functions discovery calls, answering from a fixture; handles are indices."""

    NVMLError = NVMLError

    def __init__(self, recording: dict[str, Any], *, init_error: int | None = None,
                 lost: frozenset[int] = frozenset(), names_as_bytes: bool = False) -> None:
        self.devices = recording["devices"]
        self.init_error = init_error
        self.lost = lost
        self.names_as_bytes = names_as_bytes
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index in self.lost:
            raise NVMLError(15)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        name = self.devices[handle]["name"]
        return name.encode() if self.names_as_bytes else name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(**self.devices[handle]["memory"])

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self.devices[handle]["uuid"])

    def nvmlDeviceGetPciInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self.devices[handle]["pci_bus_id"].encode())  # c_char array: bytes


def recording(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def replay(name: str, **kw: Any) -> ReplayNvml:
    return ReplayNvml(recording(name), **kw)


# mapping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "memory", "gpu_type", "known"), [
    ("NVIDIA H100 80GB HBM3", 85520809984, "h100-80gb", True),
    ("NVIDIA H100 PCIe", 81559 * MIB, "h100-80gb", True),
    ("NVIDIA H200", 150754820096, "h200-140gb", True),
    ("NVIDIA H200 NVL", 143771 * MIB, "h200-140gb", True),
    ("NVIDIA A100-SXM4-80GB", 85899345920, "a100-80gb", True),
    ("NVIDIA A100 80GB PCIe", 85899345920, "a100-80gb", True),
    ("NVIDIA L40S", 48305799168, "l40s-48gb", True),
    ("NVIDIA B200", 183359 * MIB, "b200-192gb", True),
    # a catalog family with another memory size: a derived type, GiB rounded
    ("NVIDIA A100-SXM4-40GB", 40960 * MIB, "a100-40gb", False),
    ("NVIDIA H100 NVL", 95830605824, "h100-89gb", False),
    # families the catalog lacks; GH200 and GB200 are not H200 and B200, L40 is not L40S
    ("NVIDIA GH200 480GB", 97871 * MIB, "gh200-96gb", False),
    ("NVIDIA GB200", 189471 * MIB, "gb200-185gb", False),
    ("NVIDIA L40", 46068 * MIB, "l40-45gb", False),
    ("NVIDIA GeForce RTX 4090", 24564 * MIB, "rtx4090-24gb", False),
    ("Tesla T4", 15360 * MIB, "t4-15gb", False),
    ("NVIDIA RTX 6000 Ada Generation", 49140 * MIB, "rtx6000ada-48gb", False),
])
def test_device_names_and_memory_map_to_catalog_gpu_types(name: str, memory: int, gpu_type: str,
                                                          known: bool) -> None:
    assert gpu_type_for(name, memory) == (gpu_type, known)


def test_gpu_types_from_the_config_are_matched_too() -> None:
    types = ["h100-80gb", "h100-94gb", "rtx4090-24gb"]
    assert gpu_type_for("NVIDIA H100 NVL", 95830605824, types) == ("h100-94gb", True)
    assert gpu_type_for("NVIDIA GeForce RTX 4090", 24564 * MIB, types) == ("rtx4090-24gb", True)


def test_derived_types_are_valid_hardware_ids() -> None:
    from dedicate.domain.hardware import gpu_hardware_id, parse_hardware_id

    gpu_type, _ = gpu_type_for("NVIDIA RTX 6000 Ada Generation", 49140 * MIB)
    assert parse_hardware_id(gpu_hardware_id(gpu_type, "pcie", 1)).gpu_type == gpu_type


# discovery from recorded answers ----------------------------------------------------------------


def test_eight_h100s_are_one_node_of_eight_slots() -> None:
    fake = replay("linux_nvidia_8_h100_80g.json")
    infos = discover_gpus(fake)
    assert [i.index for i in infos] == list(range(8))
    assert {i.gpu_type for i in infos} == {"h100-80gb"}
    assert all(i.known and i.memory_bytes == 85520809984 for i in infos)
    assert infos[0].uuid.startswith("GPU-") and infos[0].pci_bus_id == "00000000:1B:00.0"
    assert fake.calls == ["init", "shutdown"]
    (node,) = gpu_nodes(infos)
    assert node == GpuNode("local-gpu", "h100-80gb", 8, declared=False, engine=None, devices=tuple(range(8)))
    assert isinstance(node, Node)
    assert visible_devices(node, [0, 1, 2, 3]) == "0,1,2,3"
    assert visible_devices(node, [6, 7]) == "6,7"


def test_one_h200() -> None:
    (info,) = discover_gpus(replay("linux_nvidia_1_h200.json"))
    assert (info.name, info.gpu_type, info.known) == ("NVIDIA H200", "h200-140gb", True)
    assert round(info.memory_gib, 1) == 140.4


def test_the_h200_recorded_on_a_real_machine() -> None:
    data = recording("linux_nvidia_1_h200_recorded.json")
    infos = discover_gpus(ReplayNvml(data))
    assert infos == [GpuInfo(0, "NVIDIA H200", 150754820096, "GPU-020a8d24-2133-19a0-97f4-187a41611837",
                             "00000000:00:06.0", "h200-140gb", True)]
    assert gpu_nodes(infos) == [GpuNode("local-gpu", "h200-140gb", 1, devices=(0,))]
    assert gpu_env(gpu_nodes(infos)[0], [0]) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}


def test_a_machine_mixing_types_gets_one_node_per_type_with_its_nvml_indices() -> None:
    infos = discover_gpus(replay("linux_nvidia_2_a100_80g_2_l40s.json"))
    assert [(i.index, i.gpu_type) for i in infos] == [
        (0, "a100-80gb"), (1, "l40s-48gb"), (2, "a100-80gb"), (3, "l40s-48gb")]
    a100, l40s = gpu_nodes(infos)
    assert a100 == GpuNode("local-a100-80gb", "a100-80gb", 2, devices=(0, 2))
    assert l40s == GpuNode("local-l40s-48gb", "l40s-48gb", 2, devices=(1, 3))
    assert not a100.declared and a100.engine is None
    # the scheduler's slots 0..1 of each node are these NVML devices
    assert visible_devices(a100, [1]) == "2"
    assert visible_devices(l40s, [0, 1]) == "1,3"
    assert gpu_env(l40s, [1]) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "3"}
    with pytest.raises(ValueError, match=r"slots 0\.\.1"):
        visible_devices(l40s, [2])


def test_node_name_is_configurable_for_a_single_type() -> None:
    infos = discover_gpus(replay("linux_nvidia_1_h200.json"))
    assert [n.name for n in gpu_nodes(infos, node_name="box-7")] == ["box-7"]
    assert gpu_nodes([]) == []


def test_a_plain_node_has_slot_i_on_device_i() -> None:
    assert visible_devices(Node("n", "h100-80gb", 4), [2, 3]) == "2,3"


def test_an_unknown_gpu_is_still_a_node_and_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    data = recording("linux_nvidia_1_h200.json")
    data["devices"][0].update(name="NVIDIA GH200 480GB", memory={"total": 97871 * MIB, "free": 0, "used": 0})
    with caplog.at_level(logging.INFO, logger="dedicate.runtimes.nvml"):
        (info,) = discover_gpus(ReplayNvml(data))
    assert (info.gpu_type, info.known) == ("gh200-96gb", False)
    assert gpu_nodes([info]) == [GpuNode("local-gpu", "gh200-96gb", 1, devices=(0,))]
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "gh200-96gb" in warning.getMessage() and "1x_nvidia_gh200_96gb_pcie" in warning.getMessage()


def test_names_as_bytes_from_older_bindings_are_decoded() -> None:
    infos = discover_gpus(replay("linux_nvidia_1_h200.json", names_as_bytes=True))
    assert infos[0].name == "NVIDIA H200"


# failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [12, 9])  # library not found, driver not loaded
def test_nvml_unavailable_means_no_gpus(code: int, caplog: pytest.LogCaptureFixture) -> None:
    fake = replay("linux_nvidia_8_h100_80g.json", init_error=code)
    with caplog.at_level(logging.INFO, logger="dedicate.runtimes.nvml"):
        assert discover_gpus(fake) == []
    assert fake.calls == ["init"]
    (rec,) = caplog.records
    assert rec.levelno == logging.INFO and "no GPU discovery" in rec.getMessage()


def test_a_failure_after_init_still_shuts_nvml_down() -> None:
    fake = replay("linux_nvidia_8_h100_80g.json")
    fake.nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(NVMLError(9))  # type: ignore[method-assign]
    assert discover_gpus(fake) == []
    assert fake.calls == ["init", "shutdown"]


def test_an_unexpected_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    fake = replay("linux_nvidia_8_h100_80g.json")
    fake.nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="dedicate.runtimes.nvml"):
        assert discover_gpus(fake) == []
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_a_lost_gpu_is_left_out_and_the_others_keep_their_indices() -> None:
    infos = discover_gpus(replay("linux_nvidia_2_a100_80g_2_l40s.json", lost=frozenset({2})))
    assert [i.index for i in infos] == [0, 1, 3]
    a100, l40s = gpu_nodes(infos)
    assert (a100.slots, visible_devices(a100, [0])) == (1, "0")
    assert visible_devices(l40s, [1]) == "3"


def test_the_real_pynvml_on_this_machine_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dedicate.runtimes.nvml"):
        infos = discover_gpus()
    if Path("/proc/driver/nvidia/gpus").exists() and any(Path("/proc/driver/nvidia/gpus").iterdir()):
        assert infos, "this machine has NVIDIA GPUs, yet discovery found none"
    else:
        assert infos == []
        assert any(r.levelno == logging.INFO and "no GPU discovery" in r.getMessage() for r in caplog.records)


def test_without_the_pynvml_module_there_are_no_gpus(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with caplog.at_level(logging.INFO, logger="dedicate.runtimes.nvml"):
        assert discover_gpus() == []
    assert "nvidia-ml-py" in caplog.text


# the server's hook ------------------------------------------------------------------------------


def test_discovered_nodes_honours_gpu_discover_false() -> None:
    fake = replay("linux_nvidia_8_h100_80g.json")
    assert discovered_nodes(False, nvml=fake) == []
    assert fake.calls == []
    assert [n.slots for n in discovered_nodes(True, nvml=fake)] == [8]
    # A [gpu] discover that is not true or false is refused by the settings, before discovery:
    # tests/test_settings.py::test_gpu_discover_must_be_true_or_false.


def _settings(tmp_path: Path, toml: str) -> Any:
    from dedicate.settings import load_settings

    cfg = tmp_path / "dedicate.toml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[cpu]\nslots = 2\nslot_memory_gb = 4\n" + toml)
    return load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "data")})


def _fake_pynvml(monkeypatch: pytest.MonkeyPatch, fixture: str) -> None:
    monkeypatch.setattr(nvml, "_load_pynvml", lambda: replay(fixture))


def test_build_parts_adds_the_discovered_gpu_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dedicate.server import build_parts

    _fake_pynvml(monkeypatch, "linux_nvidia_2_a100_80g_2_l40s.json")
    nodes = build_parts(_settings(tmp_path, "")).runtime.nodes()
    assert [(n.name, n.gpu_type, n.slots, n.declared) for n in nodes] == [
        ("local-a100-80gb", "a100-80gb", 2, False), ("local-l40s-48gb", "l40s-48gb", 2, False),
        ("local", "cpu", 2, False)]


def test_build_parts_without_discovery_or_with_declared_nodes(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from dedicate.server import build_parts

    _fake_pynvml(monkeypatch, "linux_nvidia_8_h100_80g.json")
    off = build_parts(_settings(tmp_path / "off", "[gpu]\ndiscover = false\n")).runtime.nodes()
    assert [n.name for n in off] == ["local"]
    declared = build_parts(_settings(tmp_path / "declared", (
        '[[nodes]]\nname = "lab"\ngpu_type = "h100-80gb"\ngpus = 2\nengine = "synthetic"\n'
    ))).runtime.nodes()
    assert [(n.name, n.declared) for n in declared] == [("lab", True), ("local", False)]
