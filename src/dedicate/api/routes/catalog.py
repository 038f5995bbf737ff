"""Hardware, availability zones, the model catalog, keys and whoami."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dedicate.api import schemas
from dedicate.api.deps import call, flag, json_body, principal, services
from dedicate.domain.capacity import GB, memory_needed_bytes

router = APIRouter()


@router.get("/v1/hardware")
async def list_hardware(request: Request) -> dict[str, Any]:
    await principal(request)
    svc = services(request)
    offers = await call(svc.hardware, request.query_params.get("model") or None)
    now = svc.clock.now()
    return {"object": "list", "data": [schemas.hardware(o, now) for o in offers]}


@router.get("/v1/clusters/availability-zones")
async def availability_zones(request: Request) -> dict[str, Any]:
    await principal(request)
    return {"avzones": services(request).availability_zones()}


@router.get("/v1/catalog/models")
async def catalog_models(request: Request) -> dict[str, Any]:
    await principal(request)
    catalog = services(request).settings.catalog
    data = []
    for m in sorted(catalog.models.values(), key=lambda m: m.name):
        runnable = [e for e in m.engines if e in catalog.engines]
        data.append({
            "object": "model", "id": m.name, "family": m.family, "parameters_b": m.params_b,
            "context_length": m.context_length, "dtype": m.dtype, "engines": list(m.engines),
            "deployable": bool(runnable), "memory_needed_gb": round(memory_needed_bytes(m) / GB, 2),
        })
    return {"object": "list", "data": data}


@router.post("/v1/keys")
async def create_key(request: Request) -> dict[str, Any]:
    p = await principal(request)
    key, secret = await call(services(request).create_key, p, await json_body(request))
    return schemas.api_key(key, secret)


@router.get("/v1/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    p = await principal(request)
    all_owners = flag(request.query_params.get("all"), "all", False)
    keys = await call(services(request).list_keys, p, all_owners=all_owners)
    return {"object": "list", "data": [schemas.api_key(k) for k in keys]}


@router.delete("/v1/keys/{key_id}")
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    p = await principal(request)
    return schemas.api_key(await call(services(request).revoke_key, p, key_id))


@router.get("/v1/owners/{owner}")
async def get_owner(request: Request, owner: str) -> dict[str, Any]:
    p = await principal(request)
    return await call(services(request).quota, p, owner)


@router.put("/v1/owners/{owner}/quota")
async def set_quota(request: Request, owner: str) -> dict[str, Any]:
    p = await principal(request)
    return await call(services(request).set_quota, p, owner, await json_body(request))


@router.get("/v1/nodes")
async def nodes(request: Request) -> dict[str, Any]:
    p = await principal(request)
    return {"object": "list", "data": await call(services(request).nodes_view, p)}


@router.get("/v1/queue")
async def queue(request: Request) -> dict[str, Any]:
    p = await principal(request)
    return {"object": "list", "data": await call(services(request).queue_view, p)}


@router.get("/v3/whoami")
async def whoami(request: Request) -> dict[str, Any]:
    p = await principal(request)
    return {
        "type": "project_api_key",
        "api_key": {"id": p.key_id},
        "organization": {"id": p.owner, "name": p.owner},
        "project": {"id": p.owner, "name": p.owner, "slug": p.owner},
        "admin": p.is_admin,
    }
