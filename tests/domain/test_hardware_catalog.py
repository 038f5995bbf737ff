"""Hardware shape ids, the default catalog and its look-ups."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedicate.domain.catalog import (
    DEFAULT_CPU_CENTS_PER_MINUTE,
    DEFAULT_GPU_COUNTS,
    DEFAULT_GPU_PRICES,
    DEFAULT_MODELS,
    Catalog,
    default_hardware,
    hardware_from_config,
)
from dedicate.domain.errors import InvalidRequest
from dedicate.domain.hardware import CPU_GPU_TYPE, ShapeId, gpu_hardware_id, parse_hardware_id
from dedicate.domain.models import TINY_CHAT

CPU_SLOT_GB = 12


def catalog(engines: tuple[str, ...] = ("transformers", "vllm")) -> Catalog:
    return Catalog.build(default_hardware(CPU_SLOT_GB), DEFAULT_MODELS, engines)


# parse_hardware_id ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hardware_id", "shape"),
    [
        ("1x_nvidia_h100_80gb_sxm", ShapeId("h100-80gb", "sxm", 80, 1)),
        ("2x_nvidia_h100_80gb_sxm", ShapeId("h100-80gb", "sxm", 80, 2)),
        ("8x_nvidia_b200_192gb_sxm", ShapeId("b200-192gb", "sxm", 192, 8)),
        ("4x_nvidia_l40s_48gb_pcie", ShapeId("l40s-48gb", "pcie", 48, 4)),
        ("16x_nvidia_a100_80gb_sxm", ShapeId("a100-80gb", "sxm", 80, 16)),
    ],
)
def test_gpu_ids_split_into_type_link_memory_and_count(hardware_id: str, shape: ShapeId) -> None:
    assert parse_hardware_id(hardware_id) == shape


def test_cpu_id_has_no_gpu_memory() -> None:
    assert parse_hardware_id("1x_cpu") == ShapeId(CPU_GPU_TYPE, "none", None, 1)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "h100",
        "0x_nvidia_h100_80gb_sxm",
        "01x_nvidia_h100_80gb_sxm",
        "x_nvidia_h100_80gb_sxm",
        "1x_nvidia_h100_80_sxm",
        "1x_nvidia_h100_80gb",
        "1x_NVIDIA_H100_80GB_SXM",
        "1x_amd_mi300_192gb_oam",
        "0x_cpu",
        "cpu",
        "1x_nvidia_h100_80gb_sxm ",
        "1x_cpu\n",
    ],
)
def test_malformed_ids_are_refused_with_the_format(bad: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_hardware_id(bad)
    message = exc.value.message
    assert message.startswith("invalid hardware provided")
    assert "'1x_nvidia_h100_80gb_sxm'" in message and "'1x_cpu'" in message
    assert "GET /v1/hardware" in message
    assert exc.value.param == "hardware"


@pytest.mark.parametrize("gpu_type", sorted(DEFAULT_GPU_PRICES))
@pytest.mark.parametrize("count", DEFAULT_GPU_COUNTS)
def test_gpu_hardware_id_round_trips_through_parse(gpu_type: str, count: int) -> None:
    link = DEFAULT_GPU_PRICES[gpu_type][0]
    shape = parse_hardware_id(gpu_hardware_id(gpu_type, link, count))
    assert (shape.gpu_type, shape.gpu_link, shape.gpu_count) == (gpu_type, link, count)


def test_gpu_hardware_id_has_the_providers_format() -> None:
    assert gpu_hardware_id("h100-80gb", "sxm", 2) == "2x_nvidia_h100_80gb_sxm"


@given(
    name=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    mem=st.integers(1, 999),
    link=st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True),
    count=st.integers(1, 64),
)
def test_any_well_formed_gpu_shape_round_trips(name: str, mem: int, link: str, count: int) -> None:
    gpu_type = f"{name}-{mem}gb"
    assert parse_hardware_id(gpu_hardware_id(gpu_type, link, count)) == ShapeId(gpu_type, link, mem, count)


# the default catalog -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "type_", "link"),
    [
        ("h100_80gb", "h100-80gb", "sxm"),
        ("h200_140gb", "h200-140gb", "sxm"),
        ("a100_80gb", "a100-80gb", "sxm"),
        ("l40s_48gb", "l40s-48gb", "pcie"),
        ("b200_192gb", "b200-192gb", "sxm"),
    ],
)
@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_default_catalog_offers_common_gpus_in_1_2_4_8(gpu: str, type_: str, link: str, count: int) -> None:
    hw = catalog().get_hardware(f"{count}x_nvidia_{gpu}_{link}")
    per_gpu = DEFAULT_GPU_PRICES[type_][1]
    assert hw.gpu_type == type_
    assert hw.gpu_count == count
    assert hw.gpu_memory_gb == int(gpu.split("_")[1].removesuffix("gb"))
    assert hw.total_memory_gb == hw.gpu_memory_gb * count
    assert hw.cents_per_minute == per_gpu * count
    assert isinstance(hw.cents_per_minute, Decimal)
    assert hw.engine == "vllm"
    assert not hw.is_cpu


def test_default_catalog_has_exactly_the_gpu_shapes_and_one_cpu_slot() -> None:
    ids = set(catalog().hardware)
    assert len(ids) == len(DEFAULT_GPU_PRICES) * len(DEFAULT_GPU_COUNTS) + 1
    assert "1x_cpu" in ids


def test_default_cpu_slot_runs_transformers_with_the_configured_memory() -> None:
    hw = catalog().get_hardware("1x_cpu")
    assert hw.is_cpu
    assert (hw.gpu_count, hw.gpu_memory_gb, hw.gpu_link) == (1, CPU_SLOT_GB, "none")
    assert hw.cents_per_minute == DEFAULT_CPU_CENTS_PER_MINUTE
    assert hw.engine == "transformers"


def test_h100_prices_are_per_gpu_times_count() -> None:
    c = catalog()
    assert c.get_hardware("1x_nvidia_h100_80gb_sxm").cents_per_minute == Decimal("5.60")
    assert c.get_hardware("8x_nvidia_h100_80gb_sxm").cents_per_minute == Decimal("44.80")


def test_every_default_id_parses_to_its_own_specs() -> None:
    for hw in catalog().hardware.values():
        shape = parse_hardware_id(hw.id)
        assert (shape.gpu_type, shape.gpu_link, shape.gpu_count) == (hw.gpu_type, hw.gpu_link, hw.gpu_count)
        if not hw.is_cpu:
            assert shape.gpu_memory_gb == hw.gpu_memory_gb


def test_hardware_from_config_derives_specs_from_the_id() -> None:
    hw = hardware_from_config("2x_nvidia_rtx4090_24gb_pcie", Decimal("1.5"), None, CPU_SLOT_GB)
    assert (hw.gpu_type, hw.gpu_link, hw.gpu_memory_gb, hw.gpu_count) == ("rtx4090-24gb", "pcie", 24, 2)
    assert hw.engine == "vllm"
    assert hw.cents_per_minute == Decimal("1.5")


def test_hardware_from_config_cpu_takes_the_slot_memory_and_transformers() -> None:
    hw = hardware_from_config("1x_cpu", Decimal("0.1"), None, 6)
    assert (hw.gpu_memory_gb, hw.engine, hw.is_cpu) == (6, "transformers", True)


# get_hardware / get_model --------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_hardware_says_it_is_required(missing: str | None) -> None:
    with pytest.raises(InvalidRequest) as exc:
        catalog().get_hardware(missing)
    assert exc.value.message.startswith("hardware is required")
    assert "GET /v1/hardware" in exc.value.message
    assert exc.value.param == "hardware"


def test_well_formed_but_unoffered_hardware_lists_the_choices() -> None:
    with pytest.raises(InvalidRequest) as exc:
        catalog().get_hardware("3x_nvidia_h100_80gb_sxm")
    message = exc.value.message
    assert message.startswith("invalid hardware provided")
    assert "not offered by this installation" in message
    assert "1x_cpu" in message and "8x_nvidia_h100_80gb_sxm" in message


def test_malformed_hardware_gets_the_format_hint() -> None:
    with pytest.raises(InvalidRequest) as exc:
        catalog().get_hardware("h100")
    assert exc.value.message.startswith("invalid hardware provided")
    assert "ids look like" in exc.value.message


def test_known_model_is_found() -> None:
    assert catalog().get_model(TINY_CHAT).family == "tiny-chat"


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_model_says_it_is_required(missing: str | None) -> None:
    with pytest.raises(InvalidRequest, match="model is required") as exc:
        catalog().get_model(missing)
    assert exc.value.param == "model"


def test_unknown_model_is_not_supported_and_says_where_to_look() -> None:
    with pytest.raises(InvalidRequest) as exc:
        catalog().get_model("acme/unknown-13B")
    assert "not supported" in exc.value.message
    assert "'acme/unknown-13B'" in exc.value.message
    assert "GET /v1/catalog/models" in exc.value.message
    assert exc.value.param == "model"


# engine_for --------------------------------------------------------------------------------------


def test_tiny_chat_on_cpu_runs_transformers() -> None:
    c = catalog()
    assert c.engine_for(c.get_model(TINY_CHAT), c.get_hardware("1x_cpu")) == "transformers"


def test_llama_on_h100_runs_vllm_when_installed() -> None:
    c = catalog()
    model = c.get_model("meta-llama/Llama-3.1-8B-Instruct")
    assert c.engine_for(model, c.get_hardware("1x_nvidia_h100_80gb_sxm")) == "vllm"


def test_no_engine_when_the_shapes_engine_is_not_installed() -> None:
    c = catalog(engines=("transformers",))
    model = c.get_model("meta-llama/Llama-3.1-8B-Instruct")
    assert c.engine_for(model, c.get_hardware("1x_nvidia_h100_80gb_sxm")) is None


def test_no_engine_when_the_model_cannot_run_on_the_shapes_engine() -> None:
    c = catalog()
    assert c.engine_for(c.get_model(TINY_CHAT), c.get_hardware("1x_nvidia_h100_80gb_sxm")) is None
    assert c.engine_for(c.get_model("meta-llama/Llama-3.1-8B-Instruct"), c.get_hardware("1x_cpu")) is None
