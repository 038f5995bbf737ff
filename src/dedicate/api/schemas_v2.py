"""API objects of Together's v2 API (``/v2/...``), as the together 3.1.1 SDK and ``tg`` read them: the
shared base and list, and the catalog (supported models, models, configs, instance types, uploads).

v2 is proto3 JSON: camelCase keys, enums by their full names (``VISIBILITY_INTERNAL``), int64
values as strings (``contextLength``), times in RFC 3339. Lists are ``{"object": "list", "data":
[...], "next_cursor": ...}``, with ``next_cursor`` in snake_case and ``data`` never null.
``docs/api-v2.md`` says what is supported; ``../shared/API-COMPAT-V2.md`` is the contract.
Endpoints and deployments are in ``schemas_v2_endpoints.py``, analytics in ``schemas_v2_analytics.py``.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from dedicate.api.schemas import Time
from dedicate.control.offerings import InstanceType
from dedicate.domain.models import ModelSpec
from dedicate.domain.offerings import (
    CATALOG_PROJECT,
    Offer,
    SupportedModel,
    accelerator_type,
    cents_per_hour,
    config_path,
    instance_name,
    model_id,
    model_path,
)
from dedicate.domain.projects import Organization, Project
from dedicate.domain.records import OwnerModel


class V2(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


T = TypeVar("T")


class Page(V2, Generic[T]):
    """A v2 list: ``data`` never null, ``next_cursor`` snake_case and null on the last page."""

    object: Literal["list"] = "list"
    data: list[T]
    next_cursor: str | None = Field(None, alias="next_cursor")


# the catalog: supported models and their deployment profiles -----------------------------------

class Benchmarks(V2):
    max_context_length: str | None = Field(None, description="int64, as a string")


class DeploymentProfile(V2):
    """One shape the model fits and runs on here; ``config`` is what a deployment of it names."""

    model: str = Field(description="projects/{project}/models/{model}: what POST .../deployments takes as `model`")
    config: str = Field(description="projects/{project}/configs/{config}: what POST .../deployments takes as `config`")
    model_name: str = Field(description="the name users type, e.g. dedicate/tiny-chat")
    certified_config_revision_id: str
    certified_model_revision_id: str = ""
    profile_id: str
    gpu_count: int
    gpu_type: str = Field(description="nvidia-h100-80gb, or cpu")
    parallelism: str = Field(description="tensor parallelism over the replica's GPUs, e.g. TP2")
    quantization: str = Field(description="the weights' dtype")
    adapter_mode: Literal["ADAPTER_MODE_DISABLED"] = "ADAPTER_MODE_DISABLED"
    performance_benchmarks: Benchmarks
    hardware: str = Field(description="dedicate's hardware id of the shape (v1's `hardware`)")

    @classmethod
    def of(cls, o: Offer) -> DeploymentProfile:
        return cls(model=model_path(CATALOG_PROJECT, model_id(o.model)),
                   config=config_path(CATALOG_PROJECT, o.config_id), model_name=o.model.name,
                   certified_config_revision_id=o.config_id, profile_id=o.config_id,
                   gpu_count=o.hardware.gpu_count, gpu_type=accelerator_type(o.hardware),
                   parallelism=f"TP{o.hardware.gpu_count}", quantization=o.model.dtype,
                   performance_benchmarks=Benchmarks(max_context_length=str(o.model.context_length)),
                   hardware=o.hardware.id)


class SupportedModelOut(V2):
    id: str
    name: str
    display_name: str
    display_type: Literal["chat"] = "chat"
    publisher: str
    architecture: str
    context_length: str
    description: str
    base_model: str
    base_model_id: str
    status: Literal["SUPPORTED_MODEL_STATUS_SUPPORTED"] = "SUPPORTED_MODEL_STATUS_SUPPORTED"
    capabilities: list[Literal["CAPABILITY_CHAT"]] = ["CAPABILITY_CHAT"]
    input_modalities: list[Literal["MODALITY_TEXT"]] = ["MODALITY_TEXT"]
    output_modalities: list[Literal["MODALITY_TEXT"]] = ["MODALITY_TEXT"]
    products: list[Literal["PRODUCT_DEDICATED"]] = ["PRODUCT_DEDICATED"]
    deployment_profiles: list[DeploymentProfile]
    created_at: Time
    updated_at: Time

    @classmethod
    def of(cls, m: SupportedModel, since: Time) -> SupportedModelOut:
        spec = m.model
        return cls(id=m.id, name=spec.name, display_name=spec.name, publisher=spec.name.partition("/")[0],
                   architecture=spec.family, context_length=str(spec.context_length),
                   description=f"{spec.name}: {spec.params_b:g}B parameters, {spec.dtype}",
                   base_model=model_path(CATALOG_PROJECT, m.id), base_model_id=m.id,
                   deployment_profiles=[DeploymentProfile.of(o) for o in m.offers],
                   created_at=since, updated_at=since)


# models -----------------------------------------------------------------------------------------

class Parameters(V2):
    total: str = Field(description="int64, as a string")
    by_dtype: list[dict[str, str]] = Field(default_factory=list)


class Weights(V2):
    type: Literal["WEIGHTS_TYPE_DEFAULT", "WEIGHTS_TYPE_ADAPTER"] = "WEIGHTS_TYPE_DEFAULT"
    architecture: str
    context_length: str
    parameters: Parameters


class ModelOut(V2):
    id: str
    name: str
    project_id: str
    organization_id: str
    visibility: Literal["VISIBILITY_PRIVATE", "VISIBILITY_INTERNAL"] = "VISIBILITY_INTERNAL"
    weights: Weights
    base_model: str
    base_model_id: str
    description: str
    created_at: Time

    @classmethod
    def catalog(cls, m: SupportedModel, org: Organization, since: Time) -> ModelOut:
        spec = m.model
        return cls(id=m.id, name=spec.name, project_id=CATALOG_PROJECT, organization_id=org.id,
                   weights=_weights(spec, "WEIGHTS_TYPE_DEFAULT"),
                   base_model=model_path(CATALOG_PROJECT, m.id), base_model_id=m.id,
                   description=f"{spec.name} from the installation's catalog", created_at=since)

    @classmethod
    def registered(cls, m: OwnerModel, base: ModelSpec, org: Organization) -> ModelOut:
        """A project's fine-tune: private to it, with its base's architecture and size."""
        kind: Literal["WEIGHTS_TYPE_DEFAULT", "WEIGHTS_TYPE_ADAPTER"] = \
            "WEIGHTS_TYPE_ADAPTER" if m.kind == "WEIGHTS_TYPE_ADAPTER" else "WEIGHTS_TYPE_DEFAULT"
        return cls(id=m.id, name=m.name, project_id=Project.of(m.owner).id, organization_id=org.id,
                   visibility="VISIBILITY_PRIVATE", weights=_weights(base, kind),
                   base_model=model_path(CATALOG_PROJECT, model_id(m.base)), base_model_id=model_id(m.base),
                   description=m.description or f"a fine-tune of {m.base}", created_at=m.created_at)


def _weights(spec: ModelSpec, kind: Literal["WEIGHTS_TYPE_DEFAULT", "WEIGHTS_TYPE_ADAPTER"]) -> Weights:
    total = str(round(spec.params_b * 1e9))
    return Weights(type=kind, architecture=spec.family, context_length=str(spec.context_length),
                   parameters=Parameters(total=total, by_dtype=[{"dtype": spec.dtype, "count": total}]))


class UploadOut(V2):
    directory: str = Field(description="the upload's directory under the model root: register it as `path`")
    file: str
    bytes: str = Field(description="int64, as a string")
    upload_bytes: str = Field(description="every file of the upload together")


# configs ----------------------------------------------------------------------------------------

class Selector(V2):
    key: str
    value: str


class ConfigOut(V2):
    """A model on one shape: the engine, GPU type and count its deployments run on."""

    id: str
    project_id: str
    reference_model: str
    reference_model_id: str
    selectors: list[Selector]
    certifications: list[dict[str, str]] = Field(default_factory=list)

    @classmethod
    def of(cls, o: Offer) -> ConfigOut:
        mid = model_id(o.model)
        return cls(id=o.config_id, project_id=CATALOG_PROJECT, reference_model=model_path(CATALOG_PROJECT, mid),
                   reference_model_id=mid, selectors=[Selector(key=k, value=v) for k, v in o.selectors])


# instance types ---------------------------------------------------------------------------------

class Headroom(V2):
    relation: Literal["RELATION_EQ"] = "RELATION_EQ"
    value: int = Field(description="replicas of this shape that the free slots hold now")


class Region(V2):
    name: str
    headroom: Headroom


class InstanceTypeOut(V2):
    id: str = Field(description="dedicate's hardware id")
    name: str = Field(description="{accelerator_count}x{accelerator_type}, as the CLI composes it from a config")
    description: str
    gpu_count: int
    gpu_memory_gib: int
    gpu_type: str
    price_cents_per_hour: int = Field(description="per replica, rounded to whole cents")
    regions: list[Region]

    @classmethod
    def of(cls, t: InstanceType) -> InstanceTypeOut:
        hw = t.hardware
        what = "CPU slot" if hw.is_cpu else f"{hw.gpu_type.upper()} GPU"
        return cls(id=hw.id, name=instance_name(hw), description=f"{hw.gpu_count}x {what}, {hw.engine} engine",
                   gpu_count=hw.gpu_count, gpu_memory_gib=hw.gpu_memory_gb, gpu_type=accelerator_type(hw),
                   price_cents_per_hour=cents_per_hour(hw),
                   regions=[Region(name=z, headroom=Headroom(value=n)) for z, n in t.headroom])


SupportedModelPage = Page[SupportedModelOut]
ModelPage = Page[ModelOut]
ConfigPage = Page[ConfigOut]
InstanceTypeList = Page[InstanceTypeOut]  # the whole list: next_cursor is always null
