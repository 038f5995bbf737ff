"""The catalog as Together's v2 clients read it: supported models, configs and instance types.

A *supported model* is a catalog model that some hardware shape of this installation fits and
runs; its *deployment profiles* are those shapes. A *config* is one such (model, shape) pair: the
engine, GPU type and count a deployment of the model runs on. An *instance type* is a shape with
its price per hour and its headroom now. All of them are derived from the catalog, never stored,
so their ids are stable hashes of what they stand for: ``ml_`` of the model's name, ``cr_`` of
the model and the shape. The catalog's models and configs belong to the catalog project
(``CATALOG_PROJECT``), which every key may read and none may write.

The CLI builds a hardware name as ``{accelerator_count}x{accelerator_type}`` from a config's
selectors and looks it up among the instance types' names, so both come from ``instance_name``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dedicate.domain.hardware import Hardware
from dedicate.domain.models import ModelSpec

CATALOG_PROJECT = "catalog"  # not proj_<owner>: no owner can have it
MODEL_PREFIX = "ml_"
CONFIG_PREFIX = "cr_"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def model_id(model: ModelSpec | str) -> str:
    name = model if isinstance(model, str) else model.name
    return f"{MODEL_PREFIX}{_digest('model', name)}"


def config_id(model: ModelSpec, hardware: Hardware) -> str:
    return f"{CONFIG_PREFIX}{_digest('config', model.name, hardware.id)}"


def model_path(project: str, model: str) -> str:
    return f"projects/{project}/models/{model}"


def config_path(project: str, config: str) -> str:
    return f"projects/{project}/configs/{config}"


def accelerator_type(hardware: Hardware) -> str:
    """``nvidia-h100-80gb`` for an H100 shape, ``cpu`` for a CPU slot."""
    return "cpu" if hardware.is_cpu else f"nvidia-{hardware.gpu_type}"


def instance_name(hardware: Hardware) -> str:
    """``1xnvidia-h100-80gb``: the name the CLI composes from a config's selectors."""
    return f"{hardware.gpu_count}x{accelerator_type(hardware)}"


def cents_per_hour(hardware: Hardware) -> int:
    """Whole cents per replica-hour, rounded half up (the type is an int)."""
    return int((hardware.cents_per_minute * 60).to_integral_value(rounding="ROUND_HALF_UP"))


@dataclass(frozen=True)
class Offer:
    """A model that a shape of this installation fits and runs, and the engine it runs on."""

    model: ModelSpec
    hardware: Hardware
    engine: str

    @property
    def config_id(self) -> str:
        return config_id(self.model, self.hardware)

    @property
    def selectors(self) -> tuple[tuple[str, str], ...]:
        return (("accelerator_type", accelerator_type(self.hardware)),
                ("accelerator_count", str(self.hardware.gpu_count)),
                ("hardware", self.hardware.id),
                ("engine", self.engine))


@dataclass(frozen=True)
class SupportedModel:
    model: ModelSpec
    offers: tuple[Offer, ...]  # one deployment profile each, smallest shape first

    @property
    def id(self) -> str:
        return model_id(self.model)


def supported_models(offers: Iterable[Offer]) -> list[SupportedModel]:
    """Each model with at least one offer, by name; its offers by GPU type and count."""
    by_model: dict[str, list[Offer]] = {}
    for o in offers:
        by_model.setdefault(o.model.name, []).append(o)
    return [SupportedModel(found[0].model,
                           tuple(sorted(found, key=lambda o: (o.hardware.gpu_type, o.hardware.gpu_count))))
            for _, found in sorted(by_model.items())]


def search_models(models: Sequence[SupportedModel], search: str | None) -> list[SupportedModel]:
    """An exact name (any case) gives that model alone; anything else matches names containing it.

    The CLI's deploy looks a public model up with ``search=<its name>`` and fails unless exactly one
    comes back, so ``Qwen/Qwen2.5-7B`` must not also bring ``Qwen/Qwen2.5-7B-Instruct``.
    """
    if not search:
        return list(models)
    needle = search.strip().lower()
    exact = [m for m in models if m.model.name.lower() == needle or m.id == search.strip()]
    if exact:
        return exact
    return [m for m in models if needle in m.model.name.lower() or needle in m.model.family.lower()]
