"""What this installation offers, as the v2 catalog routes list it: offers, configs, instance types.

An offer is a (model, shape) pair that fits and has an engine here, worked out as ``GET
/v1/hardware?model=`` does; the headroom of a shape is how many more replicas of it the free
slots hold now, per region. A region is an availability zone; nodes carry no zone yet, so the
first zone holds every node and the others have no headroom.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dedicate.control.services import Services
from dedicate.domain.capacity import fits
from dedicate.domain.errors import NotFound
from dedicate.domain.hardware import Hardware
from dedicate.domain.offerings import Offer, SupportedModel, model_id, supported_models
from dedicate.scheduler.placement import headroom

# The v2 filters that dedicate's catalog can match: it serves text chat models on dedicated replicas.
PRODUCTS = ("PRODUCT_SERVERLESS", "PRODUCT_DEDICATED", "PRODUCT_FINE_TUNING")
MODALITIES = ("MODALITY_TEXT", "MODALITY_IMAGE", "MODALITY_AUDIO", "MODALITY_VIDEO")
OFFERED_PRODUCTS = ("PRODUCT_DEDICATED",)
OFFERED_MODALITIES = ("MODALITY_TEXT",)


@dataclass(frozen=True)
class InstanceType:
    hardware: Hardware
    headroom: tuple[tuple[str, int], ...]  # (region, replicas that fit now)


def model_not_found(model: str) -> NotFound:
    return NotFound(f"model {model!r} not found; list the supported models with GET /v2/supported-models "
                    "(`tg models public`)", code="model_not_found")


def config_not_found(config: str) -> NotFound:
    return NotFound(f"config {config!r} not found; list a model's configs with GET "
                    "/v2/projects/{project}/configs?referenceModelId=<model id> (`tg models configs MODEL`)",
                    code="config_not_found")


class Offerings:
    """The v2 catalog; ``since`` is when this catalog was loaded (the server's start), its objects' times."""

    def __init__(self, services: Services, since: datetime) -> None:
        self.svc = services
        self.since = since

    def offers(self) -> list[Offer]:
        found = []
        for spec in self.svc.catalog.models.values():
            for hw in self.svc.catalog.hardware.values():
                if not fits(spec, hw):
                    continue
                engine = self.svc.engine_for(spec, hw)
                if engine is not None:
                    found.append(Offer(spec, hw, engine))
        return found

    def supported(self, *, product: str | None = None, modality: str | None = None) -> list[SupportedModel]:
        if (product is not None and product not in OFFERED_PRODUCTS) or \
                (modality is not None and modality not in OFFERED_MODALITIES):
            return []
        return supported_models(self.offers())

    def supported_model(self, key: str) -> SupportedModel:
        """By id (``ml_…``) or by name."""
        for m in self.supported():
            if key in (m.id, m.model.name):
                return m
        raise model_not_found(key)

    def configs(self, reference_model: str | None) -> list[Offer]:
        """Every config, or a model's (``reference_model`` is its id, name or resource path)."""
        offers = sorted(self.offers(), key=lambda o: (o.model.name, o.hardware.gpu_type, o.hardware.gpu_count))
        if reference_model is None:
            return offers
        wanted = reference_model.rsplit("/", 1)[-1] if reference_model.startswith("projects/") else reference_model
        return [o for o in offers if wanted in (model_id(o.model), o.model.name)]

    def config(self, config: str) -> Offer:
        for o in self.offers():
            if o.config_id == config:
                return o
        raise config_not_found(config)

    def instance_types(self) -> list[InstanceType]:
        by_zone = self.svc.node_views_by_zone()
        shapes = sorted(self.svc.catalog.hardware.values(), key=lambda h: (h.gpu_type, h.gpu_count))
        return [InstanceType(hw, tuple((z, headroom(views, hw.gpu_type, hw.gpu_count)) for z, views in by_zone.items()))
                for hw in shapes]

    def instance_type(self, key: str) -> InstanceType:
        for t in self.instance_types():
            if t.hardware.id == key:
                return t
        raise NotFound(f"instance type {key!r} not found; list them with GET /v2/public/inference-instance-types",
                       code="instance_type_not_found")

