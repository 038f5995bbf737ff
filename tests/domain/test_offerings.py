"""The catalog as v2 names it: stable ids, the hardware name the CLI composes, the exact-name search."""

from __future__ import annotations

from decimal import Decimal

from dedicate.domain.catalog import DEFAULT_MODELS, cpu_hardware, default_hardware
from dedicate.domain.offerings import (
    Offer,
    cents_per_hour,
    config_id,
    instance_name,
    model_id,
    search_models,
    supported_models,
)

SHAPES = {h.id: h for h in default_hardware(8)}
MODELS = {m.name: m for m in DEFAULT_MODELS}
QWEN = MODELS["Qwen/Qwen2.5-7B-Instruct"]


def test_ids_are_stable_and_differ_per_model_and_shape() -> None:
    h1, h2 = SHAPES["1x_nvidia_h100_80gb_sxm"], SHAPES["2x_nvidia_h100_80gb_sxm"]
    assert model_id(QWEN) == model_id(QWEN.name) and model_id(QWEN).startswith("ml_")
    assert model_id(QWEN) != model_id("Qwen/Qwen2.5-7B")
    assert config_id(QWEN, h1) == config_id(QWEN, h1) != config_id(QWEN, h2)
    assert config_id(QWEN, h1).startswith("cr_")


def test_the_instance_name_is_what_the_cli_composes_from_the_selectors() -> None:
    assert instance_name(SHAPES["1x_nvidia_h100_80gb_sxm"]) == "1xnvidia-h100-80gb"
    assert instance_name(SHAPES["8x_nvidia_l40s_48gb_pcie"]) == "8xnvidia-l40s-48gb"
    assert instance_name(cpu_hardware(8, Decimal("0.05"), "transformers")) == "1xcpu"
    offer = Offer(QWEN, SHAPES["4x_nvidia_h100_80gb_sxm"], "vllm")
    sel = dict(offer.selectors)
    assert f"{sel['accelerator_count']}x{sel['accelerator_type']}" == instance_name(offer.hardware)


def test_the_price_per_hour_is_whole_cents_rounded_half_up() -> None:
    assert cents_per_hour(SHAPES["1x_nvidia_h100_80gb_sxm"]) == 336  # 5.60 × 60
    assert cents_per_hour(cpu_hardware(8, Decimal("0.05"), "transformers")) == 3
    assert cents_per_hour(cpu_hardware(8, Decimal("0.0125"), "transformers")) == 1  # 0.75 rounds up
    assert cents_per_hour(cpu_hardware(8, Decimal("0.0075"), "transformers")) == 0  # 0.45 rounds down


def test_an_exact_name_finds_one_model_even_when_others_contain_it() -> None:
    base = MODELS["Qwen/Qwen2.5-7B-Instruct"]
    shape = SHAPES["1x_nvidia_h100_80gb_sxm"]
    models = supported_models([Offer(m, shape, "vllm") for m in MODELS.values()])
    assert [m.model.name for m in search_models(models, "qwen/qwen2.5-7b-instruct")] == [base.name]
    assert {m.model.name for m in search_models(models, "Qwen")} == {base.name, "Qwen/Qwen2.5-72B-Instruct"}
    assert [m.model.name for m in search_models(models, model_id(base))] == [base.name]
    assert search_models(models, "no-such-model") == []
    assert len(search_models(models, None)) == len(MODELS)


def test_a_supported_model_lists_its_offers_smallest_shape_first() -> None:
    shapes = [SHAPES["8x_nvidia_h100_80gb_sxm"], SHAPES["1x_nvidia_h100_80gb_sxm"], SHAPES["2x_nvidia_a100_80gb_sxm"]]
    (model,) = supported_models([Offer(QWEN, s, "vllm") for s in shapes])
    assert [o.hardware.id for o in model.offers] == \
        ["2x_nvidia_a100_80gb_sxm", "1x_nvidia_h100_80gb_sxm", "8x_nvidia_h100_80gb_sxm"]
