"""Default target concurrency: each engine's registry entry, from the hardware and the model (docs/autoscaling.md)."""

from __future__ import annotations

from decimal import Decimal

from dedicate.autoscaler.policy import Target
from dedicate.domain.catalog import DEFAULT_MODELS, hardware_from_config
from dedicate.domain.hardware import Hardware
from dedicate.domain.models import ModelSpec
from dedicate.engines.registry import engine

LLAMA_8B = next(m for m in DEFAULT_MODELS if m.name == "meta-llama/Llama-3.1-8B-Instruct")
LLAMA_70B = next(m for m in DEFAULT_MODELS if m.name == "meta-llama/Llama-3.3-70B-Instruct")
H100 = hardware_from_config("1x_nvidia_h100_80gb_sxm", Decimal("5.6"), "vllm", 12)
H100X4 = hardware_from_config("4x_nvidia_h100_80gb_sxm", Decimal("22.4"), "vllm", 12)


def default_target_concurrency(name: str, hw: Hardware, model: ModelSpec,
                               options: dict[str, object] | None = None) -> Target:
    return engine(name).default_concurrency(hw, model, options or {})


def test_the_synthetic_engine_targets_its_stream_count_from_the_config() -> None:
    assert default_target_concurrency("synthetic", H100, LLAMA_8B).value == 16
    t = default_target_concurrency("synthetic", H100, LLAMA_8B, {"max_streams": 4})
    assert (t.value, t.source) == (4, "default") and "4 streams" in t.basis


def test_the_transformers_engine_targets_one_request_at_a_time() -> None:
    assert default_target_concurrency("transformers", H100, LLAMA_8B).value == 1


def test_vllm_targets_what_the_kv_cache_holds_beside_the_weights() -> None:
    # 72 GB usable - 16.06 GB weights - 2.68 GB overhead = 53.26 GB; / 131,072 bytes per token
    # = 406,343 tokens; / (2 x 2048) = 99 sequences.
    t = default_target_concurrency("vllm", H100, LLAMA_8B)
    assert t.value == 99 and "406,343 tokens" in t.basis


def test_vllm_on_hardware_with_no_room_for_kv_targets_one_and_more_memory_targets_more() -> None:
    assert default_target_concurrency("vllm", H100, LLAMA_70B).value == 1  # 141 GB of weights on 80 GB
    assert 1 < default_target_concurrency("vllm", H100X4, LLAMA_70B).value <= 256
