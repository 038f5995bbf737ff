"""The hardware and model catalog: built-in defaults, overridable by config.

Prices are cents per replica-minute. The defaults are per-GPU list prices
of the common shapes times the GPU count; an installation sets its own in
the config file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from dedicate.domain.errors import InvalidRequest
from dedicate.domain.hardware import Hardware, gpu_hardware_id, parse_hardware_id
from dedicate.domain.modelbook import ModelBook
from dedicate.domain.models import TINY_CHAT, ModelSpec

# gpu_type -> (link, cents per GPU-minute)
DEFAULT_GPU_PRICES: dict[str, tuple[str, Decimal]] = {
    "h100-80gb": ("sxm", Decimal("5.60")),
    "h200-140gb": ("sxm", Decimal("6.60")),
    "a100-80gb": ("sxm", Decimal("4.00")),
    "l40s-48gb": ("pcie", Decimal("2.50")),
    "b200-192gb": ("sxm", Decimal("9.20")),
}
DEFAULT_GPU_COUNTS = (1, 2, 4, 8)
DEFAULT_CPU_CENTS_PER_MINUTE = Decimal("0.05")

DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(TINY_CHAT, "tiny-chat", 0.0005, 2048, "float32", 2, 2, 16,
              ("transformers", "synthetic"), source="builtin:tiny-chat"),
    ModelSpec("meta-llama/Llama-3.1-8B-Instruct", "llama-3", 8.03, 131072, "bfloat16", 32, 8, 128,
              ("vllm", "synthetic")),
    ModelSpec("meta-llama/Llama-3.3-70B-Instruct", "llama-3", 70.6, 131072, "bfloat16", 80, 8, 128,
              ("vllm", "synthetic")),
    ModelSpec("Qwen/Qwen2.5-7B-Instruct", "qwen-2.5", 7.62, 32768, "bfloat16", 28, 4, 128,
              ("vllm", "synthetic")),
    ModelSpec("Qwen/Qwen2.5-72B-Instruct", "qwen-2.5", 72.7, 32768, "bfloat16", 80, 8, 128,
              ("vllm", "synthetic")),
    ModelSpec("mistralai/Mistral-7B-Instruct-v0.3", "mistral", 7.25, 32768, "bfloat16", 32, 8, 128,
              ("vllm", "synthetic")),
)


def default_hardware(cpu_slot_memory_gb: int, engine_for_gpu: str = "vllm") -> list[Hardware]:
    shapes = [
        Hardware(
            id=gpu_hardware_id(gpu_type, link, count),
            gpu_type=gpu_type,
            gpu_link=link,
            gpu_memory_gb=int(gpu_type.split("-")[1].removesuffix("gb")),
            gpu_count=count,
            cents_per_minute=price * count,
            engine=engine_for_gpu,
        )
        for gpu_type, (link, price) in DEFAULT_GPU_PRICES.items()
        for count in DEFAULT_GPU_COUNTS
    ]
    shapes.append(cpu_hardware(cpu_slot_memory_gb, DEFAULT_CPU_CENTS_PER_MINUTE, "transformers"))
    return shapes


def cpu_hardware(slot_memory_gb: int, cents_per_minute: Decimal, engine: str) -> Hardware:
    return Hardware("1x_cpu", "cpu", "none", slot_memory_gb, 1, cents_per_minute, engine)


def hardware_from_config(
    hardware_id: str, cents_per_minute: Decimal, engine: str | None, cpu_slot_memory_gb: int
) -> Hardware:
    """A shape declared in the config file; its specs come from its id."""
    shape = parse_hardware_id(hardware_id)
    memory = shape.gpu_memory_gb if shape.gpu_memory_gb is not None else cpu_slot_memory_gb
    default_engine = "transformers" if shape.gpu_memory_gb is None else "vllm"
    return Hardware(
        id=hardware_id,
        gpu_type=shape.gpu_type,
        gpu_link=shape.gpu_link,
        gpu_memory_gb=memory,
        gpu_count=shape.gpu_count,
        cents_per_minute=cents_per_minute,
        engine=engine or default_engine,
    )


def hardware_required() -> InvalidRequest:
    """Also for ``""``: Together's CLI sends that when the user named no hardware."""
    return InvalidRequest("hardware is required: pass a hardware id such as '1x_cpu' "
                          "(list them with GET /v1/hardware?model=MODEL)", param="hardware")


def model_unknown(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"model {name!r} is not supported on this installation: it is not in the catalog; "
        "list deployable models with GET /v1/catalog/models (`dedicate models`)",
        param="model",
    )


def model_required() -> InvalidRequest:
    return InvalidRequest("model is required: pass a model name from GET /v1/catalog/models", param="model")


@dataclass(frozen=True)
class Catalog:
    """What can be deployed (models) and on what (hardware shapes)."""

    hardware: Mapping[str, Hardware]
    models: Mapping[str, ModelSpec]
    engines: frozenset[str] = field(default_factory=frozenset)  # engines this installation can run

    @staticmethod
    def build(
        hardware: Iterable[Hardware], models: Iterable[ModelSpec], engines: Iterable[str]
    ) -> Catalog:
        return Catalog(
            hardware={h.id: h for h in hardware},
            models=ModelBook({m.name: m for m in models}),
            engines=frozenset(engines),
        )

    def get_hardware(self, hardware_id: str | None) -> Hardware:
        if not hardware_id:
            raise hardware_required()
        hw = self.hardware.get(hardware_id)
        if hw is None:
            parse_hardware_id(hardware_id)  # a malformed id gets the format hint
            raise InvalidRequest(
                f"invalid hardware provided: {hardware_id!r} is not offered by this installation; "
                f"choose one of: {', '.join(sorted(self.hardware))}",
                param="hardware",
            )
        return hw

    def get_model(self, name: str | None) -> ModelSpec:
        if not name:
            raise model_required()
        model = self.models.get(name)
        if model is None:
            raise model_unknown(name)
        return model

    def engine_for(self, model: ModelSpec, hardware: Hardware) -> str | None:
        """The engine a replica of ``model`` on ``hardware`` runs, or None if none can."""
        if hardware.engine in model.engines and hardware.engine in self.engines:
            return hardware.engine
        return None
