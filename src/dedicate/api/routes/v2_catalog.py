"""The v2 catalog: supported models, the models and configs of a project, public instance types.

The catalog's models and configs belong to the catalog project and every key may read them, under
its own project's path too (``tg`` reads a public config as ``/v2/projects/<its project>/configs``).
A project's own models (fine-tunes) are not registered yet: its listing holds the catalog's only
under the catalog project. Pages are cursor pages over the id order; a cursor is the last id of
the page before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request, Response

from dedicate.api.deps import BoundedRoute, Caller, Svc, call, one_of, whole
from dedicate.api.errors import responses
from dedicate.api.schemas_v2 import (
    ConfigOut,
    ConfigPage,
    InstanceTypeList,
    InstanceTypeOut,
    ModelOut,
    ModelPage,
    SupportedModelOut,
    SupportedModelPage,
    UploadOut,
)
from dedicate.control.inputs_v2 import ModelIn
from dedicate.control.offerings import MODALITIES, PRODUCTS, Offerings, config_not_found, model_not_found
from dedicate.control.owner_models import OwnerModels
from dedicate.control.projects import owner_in, readable
from dedicate.control.services import Services
from dedicate.control.uploads import receive
from dedicate.domain.errors import InvalidRequest
from dedicate.domain.offerings import search_models
from dedicate.domain.projects import Organization
from dedicate.domain.records import OwnerModel

router = APIRouter(route_class=BoundedRoute, tags=["v2 catalog"])
T = TypeVar("T")
DEFAULT_PAGE = 50
MAX_PAGE = 500
ADAPTER_MODES = ("ADAPTER_MODE_FIXED", "ADAPTER_MODE_DYNAMIC", "ADAPTER_MODE_DISABLED")

Limit = Annotated[int, whole("limit", 1, MAX_PAGE), Query(description=f"at most {MAX_PAGE}")]
After = Annotated[str | None, Query(description="the next_cursor of the previous page")]


def page(items: Sequence[T], key: Callable[[T], str], after: str | None, limit: int) -> tuple[list[T], str | None]:
    """Items after the one whose key is ``after``, ``limit`` of them, and the next cursor (None at the end)."""
    ordered = sorted(items, key=key)
    start = 0
    if after:
        keys = [key(x) for x in ordered]
        if after not in keys:
            raise InvalidRequest(f"after {after!r} is not a cursor of this listing; pass the next_cursor "
                                 "of the previous page", param="after")
        start = keys.index(after) + 1
    found = ordered[start:start + limit]
    more = start + limit < len(ordered)
    return found, (key(found[-1]) if more and found else None)


def offerings(svc: Svc) -> Offerings:
    return Offerings(svc, svc.started_at)


def registered_out(svc: Services, m: OwnerModel, org: Organization) -> ModelOut:
    return ModelOut.registered(m, svc.catalog.get_model(m.base), org)



@router.get("/v2/supported-models", response_model=SupportedModelPage, responses=responses(400))
async def supported_models(
    _: Caller, svc: Svc,
    search: Annotated[str | None, Query(description="an exact model name gives that model alone; "
                                                    "other text matches names containing it")] = None,
    product: Annotated[str | None, one_of("product", *PRODUCTS), Query()] = None,
    modality: Annotated[str | None, one_of("modality", *MODALITIES), Query()] = None,
    adapter_mode: Annotated[str | None, one_of("adapterMode", *ADAPTER_MODES), Query(alias="adapterMode")] = None,
    limit: Limit = DEFAULT_PAGE, after: After = None,
) -> SupportedModelPage:
    """The models some shape of this installation fits and runs, each with a profile per such shape."""
    o = offerings(svc)
    found = search_models(await call(o.supported, product=product, modality=modality), search)
    if adapter_mode not in (None, "ADAPTER_MODE_DISABLED"):
        found = []  # no profile here serves adapters yet
    items, cursor = page(found, lambda m: m.id, after, limit)
    return SupportedModelPage(data=[SupportedModelOut.of(m, o.since) for m in items], next_cursor=cursor)


@router.get("/v2/supported-models/{model_id}", response_model=SupportedModelOut, responses=responses(404))
async def supported_model(_: Caller, svc: Svc, model_id: str) -> SupportedModelOut:
    o = offerings(svc)
    return SupportedModelOut.of(await call(o.supported_model, model_id), o.since)


@router.get("/v2/projects/{project_id}/models", response_model=ModelPage, responses=responses(400, 404))
async def list_models(p: Caller, svc: Svc, project_id: str, limit: Limit = DEFAULT_PAGE,
                      after: After = None) -> ModelPage:
    """The catalog project's models are the catalog's; a project's are the fine-tunes it registered."""
    owner = readable(p, project_id)
    o = offerings(svc)
    org = Organization.named(svc.settings.organization)
    if owner is None:
        items, cursor = page(await call(o.supported), lambda m: m.id, after, limit)
        return ModelPage(data=[ModelOut.catalog(m, org, o.since) for m in items], next_cursor=cursor)
    mine, cursor = page(await call(svc.store.owner_models, owner), lambda m: m.id, after, limit)
    return ModelPage(data=[registered_out(svc, m, org) for m in mine], next_cursor=cursor)


@router.post("/v2/projects/{project_id}/models", response_model=ModelOut, responses=responses(400, 404, 409))
async def register_model(p: Caller, svc: Svc, project_id: str, body: ModelIn) -> ModelOut:
    """A fine-tune of a supported base model, from a directory of its weights; refused with a 400 unless the
    base is supported and the weights fit it (the same architecture and shape, or an adapter naming it)."""
    owner = owner_in(p, project_id)
    m = await call(OwnerModels(svc, offerings(svc)).register, p, owner, body)
    return registered_out(svc, m, Organization.named(svc.settings.organization))


@router.delete("/v2/projects/{project_id}/models/{model_id}", status_code=204, response_class=Response,
               responses=responses(404, 409))
async def delete_model(p: Caller, svc: Svc, project_id: str, model_id: str) -> Response:
    """204 once no deployment runs it (409 names them); the weights are left on disk."""
    await call(OwnerModels(svc, offerings(svc)).delete, owner_in(p, project_id), model_id)
    return Response(status_code=204)


@router.get("/v2/projects/{project_id}/models/{model_id}", response_model=ModelOut, responses=responses(404))
async def get_model(p: Caller, svc: Svc, project_id: str, model_id: str) -> ModelOut:
    """A catalog model reads the same under any project the caller may read; a registered one, under its own."""
    owner = readable(p, project_id)
    o = offerings(svc)
    org = Organization.named(svc.settings.organization)
    for m in await call(o.supported):
        if m.id == model_id:
            return ModelOut.catalog(m, org, o.since)
    if owner is not None:
        return registered_out(svc, await call(OwnerModels(svc, o).get, owner, model_id), org)
    raise model_not_found(model_id)


@router.get("/v2/projects/{project_id}/configs", response_model=ConfigPage, responses=responses(400, 404))
async def list_configs(
    p: Caller, svc: Svc, project_id: str,
    reference_model_id: Annotated[str | None, Query(alias="referenceModelId",
                                                    description="a model's id (ml_…) or name")] = None,
    reference_model: Annotated[str | None, Query(alias="referenceModel",
                                                 description="projects/{project}/models/{model}")] = None,
    limit: Limit = DEFAULT_PAGE, after: After = None,
) -> ConfigPage:
    """The catalog's configs (public: the same under every project), or one model's."""
    owner = readable(p, project_id)
    reference = reference_model_id or reference_model or None
    configs = await call(OwnerModels(svc, offerings(svc)).configs, owner, reference)
    items, cursor = page(configs, lambda c: c.config_id, after, limit)
    return ConfigPage(data=[ConfigOut.of(c) for c in items], next_cursor=cursor)


@router.get("/v2/projects/{project_id}/configs/{config_id}", response_model=ConfigOut, responses=responses(404))
async def get_config(p: Caller, svc: Svc, project_id: str, config_id: str) -> ConfigOut:
    owner = readable(p, project_id)
    if not config_id.startswith("cr_"):
        raise config_not_found(config_id)
    return ConfigOut.of(await call(OwnerModels(svc, offerings(svc)).config, owner, config_id))


@router.get("/v2/public/inference-instance-types", response_model=InstanceTypeList, responses=responses())
async def instance_types(_: Caller, svc: Svc) -> InstanceTypeList:
    """Every shape with its price per replica-hour and how many more replicas of it fit now, per region."""
    return InstanceTypeList(data=[InstanceTypeOut.of(t) for t in await call(offerings(svc).instance_types)],
                            next_cursor=None)


@router.get("/v2/public/inference-instance-types/{type_id}", response_model=InstanceTypeOut,
            responses=responses(404))
async def instance_type(_: Caller, svc: Svc, type_id: str) -> InstanceTypeOut:
    return InstanceTypeOut.of(await call(offerings(svc).instance_type, type_id))


# uploads: weights for a model, a file at a time ----------------------------------------------------

uploads = APIRouter(tags=["v2 catalog"])  # no body bound: an upload streams its own, under its cap


@uploads.put("/v2/projects/{project_id}/uploads/{upload}/files/{path:path}", response_model=UploadOut,
             responses=responses(400, 404, 413),
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def upload_file(p: Caller, svc: Svc, request: Request, project_id: str, upload: str, path: str) -> UploadOut:
    """One file of an upload, streamed into your directory under the model root; the whole upload is at most
    `[server] max_upload_bytes`. Register the upload's `directory` with POST .../models as its `path`."""
    owner = owner_in(p, project_id)
    declared = request.headers.get("content-length", "")
    got = await receive(svc.settings.models_dir, owner, upload, path, int(declared) if declared.isdigit() else None,
                        request.stream(), svc.settings.max_upload_bytes)
    return UploadOut(directory=got.directory, file=got.file, bytes=str(got.size), upload_bytes=str(got.total))
