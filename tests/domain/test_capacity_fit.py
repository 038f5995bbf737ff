"""Memory fit: weights + KV cache for one full context + (10% of weights + 1 GiB) <= 90% of memory."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedicate.domain.capacity import GB, GIB, fits, memory_needed_bytes, usable_bytes
from dedicate.domain.catalog import DEFAULT_MODELS, cpu_hardware, default_hardware
from dedicate.domain.hardware import Hardware
from dedicate.domain.models import DTYPE_BYTES, TINY_CHAT, ModelSpec

MODELS = {m.name: m for m in DEFAULT_MODELS}
TINY = MODELS[TINY_CHAT]
LLAMA_8B = MODELS["meta-llama/Llama-3.1-8B-Instruct"]
LLAMA_70B = MODELS["meta-llama/Llama-3.3-70B-Instruct"]


def cpu_slot(memory_gb: int) -> Hardware:
    return cpu_hardware(memory_gb, Decimal("0.05"), "transformers")


def shape(hardware_id: str) -> Hardware:
    return {h.id: h for h in default_hardware(12)}[hardware_id]


def h100(count: int) -> Hardware:
    return shape(f"{count}x_nvidia_h100_80gb_sxm")


def documented_needed(m: ModelSpec) -> int:
    weights: int = m.weight_bytes
    kv: int = 2 * m.num_layers * m.num_kv_heads * m.head_dim * DTYPE_BYTES[m.dtype] * m.context_length
    return weights + kv + weights // 10 + GIB


def documented_usable(hw: Hardware) -> int:
    return int(hw.gpu_memory_gb * hw.gpu_count * GB * 9 // 10)


# the formula --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", DEFAULT_MODELS, ids=lambda m: m.name)
def test_memory_needed_is_weights_plus_full_context_kv_plus_overhead(model: ModelSpec) -> None:
    assert memory_needed_bytes(model) == documented_needed(model)


@pytest.mark.parametrize("hw", default_hardware(12), ids=lambda h: h.id)
def test_usable_memory_is_ninety_percent_of_the_shapes_total(hw: Hardware) -> None:
    assert usable_bytes(hw) == documented_usable(hw)


def test_weight_bytes_are_parameters_times_dtype_size() -> None:
    assert LLAMA_70B.weight_bytes == 70_600_000_000 * 2
    assert TINY.weight_bytes == 500_000 * 4
    assert abs(LLAMA_8B.weight_bytes - 8_030_000_000 * 2) <= 1


def test_kv_bytes_per_token_counts_keys_and_values_for_every_layer() -> None:
    assert LLAMA_8B.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072
    assert LLAMA_70B.kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2 == 327_680


# the numbers the estimate gives ------------------------------------------------------------------


def test_tiny_chat_needs_about_one_gigabyte() -> None:
    assert memory_needed_bytes(TINY) == 2_000_000 + 512 * 2048 + 200_000 + GIB == 1_076_990_400


def test_llama_8b_needs_about_36_gb() -> None:
    # 16.06 GB weights + 16 GiB KV for 128K tokens + 1.6 GB + 1 GiB
    assert memory_needed_bytes(LLAMA_8B) == 35_919_611_008


def test_llama_70b_needs_about_199_gb() -> None:
    # 141.2 GB weights + 40 GiB KV for 128K tokens + 14.1 GB + 1 GiB
    assert memory_needed_bytes(LLAMA_70B) == 199_343_414_784


def test_usable_numbers_of_the_shapes_under_test() -> None:
    assert usable_bytes(cpu_slot(12)) == 10_800_000_000
    assert [usable_bytes(h100(n)) for n in (1, 2, 4)] == [72 * GB, 144 * GB, 288 * GB]


# fits -------------------------------------------------------------------------------------------


def test_tiny_chat_fits_a_12_gb_cpu_slot() -> None:
    assert fits(TINY, cpu_slot(12))


def test_tiny_chat_fits_a_2_gb_cpu_slot() -> None:
    assert fits(TINY, cpu_slot(2))


def test_llama_8b_does_not_fit_a_12_gb_cpu_slot() -> None:
    assert not fits(LLAMA_8B, cpu_slot(12))


def test_llama_8b_fits_one_h100() -> None:
    assert fits(LLAMA_8B, h100(1))


@pytest.mark.parametrize("count", [1, 2])
def test_llama_70b_does_not_fit_one_or_two_h100s_at_full_context(count: int) -> None:
    assert not fits(LLAMA_70B, h100(count))


@pytest.mark.parametrize("count", [4, 8])
def test_llama_70b_fits_four_or_more_h100s(count: int) -> None:
    assert fits(LLAMA_70B, h100(count))


def test_llama_70b_fits_two_h200s() -> None:
    assert fits(LLAMA_70B, shape("2x_nvidia_h200_140gb_sxm"))


def test_llama_8b_fits_a_40_gb_slot_but_not_a_39_gb_one() -> None:
    needed = memory_needed_bytes(LLAMA_8B)
    assert usable_bytes(cpu_slot(39)) == 35_100_000_000 < needed < 36 * GB == usable_bytes(cpu_slot(40))
    assert fits(LLAMA_8B, cpu_slot(40))
    assert not fits(LLAMA_8B, cpu_slot(39))


@given(st.sampled_from(DEFAULT_MODELS), st.sampled_from(sorted({h.gpu_type for h in default_hardware(12)})))
def test_more_gpus_of_a_type_never_stop_a_model_from_fitting(model: ModelSpec, gpu_type: str) -> None:
    shapes = sorted((h for h in default_hardware(12) if h.gpu_type == gpu_type), key=lambda h: h.gpu_count)
    fit = [fits(model, h) for h in shapes]
    assert fit == sorted(fit)  # False... then True...
