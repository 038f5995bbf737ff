"""Hardware, availability zones, the model catalog, keys, owners and the operator views."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from dedicate.api.deps import BoundedRoute, Caller, Svc, call, flag
from dedicate.api.errors import responses
from dedicate.api.schemas import (
    ApiKeyOut,
    CatalogList,
    Hardware,
    HardwareList,
    KeyList,
    NewApiKey,
    NodeList,
    NodeOut,
    OwnerOut,
    QueueEntryOut,
    QueueList,
    Zones,
)
from dedicate.control.inputs import NewKey, QuotaUpdate

router = APIRouter(route_class=BoundedRoute)
NO_KEY_BODY = NewKey()


@router.get("/v1/hardware", response_model=HardwareList, responses=responses(400), tags=["hardware"])
async def list_hardware(
    _: Caller, svc: Svc,
    model: Annotated[str | None, Query(description="only the shapes this model fits and runs on here, "
                                                   "each with its availability")] = None,
) -> HardwareList:
    offers = await call(svc.hardware, model or None)
    now = svc.clock.now()
    return HardwareList(data=[Hardware.of(o, now) for o in offers])


@router.get("/v1/clusters/availability-zones", response_model=Zones, responses=responses(), tags=["hardware"])
async def availability_zones(_: Caller, svc: Svc) -> Zones:
    return Zones(avzones=svc.availability_zones())


@router.get("/v1/catalog/models", response_model=CatalogList, responses=responses(), tags=["hardware"])
async def catalog_models(_: Caller, svc: Svc) -> CatalogList:
    """The models that can be deployed (dedicate's own listing; GET /v1/models lists your endpoints)."""
    return CatalogList.of(svc.settings.catalog)


@router.post("/v1/keys", response_model=NewApiKey, responses=responses(400, 403), tags=["keys"])
async def create_key(p: Caller, svc: Svc, body: Annotated[NewKey, Body()] = NO_KEY_BODY) -> NewApiKey:
    """The answer carries the secret, `key`, which is shown only here."""
    key, secret = await call(svc.create_key, p, body)
    return NewApiKey.made(key, secret)


@router.get("/v1/keys", response_model=KeyList, responses=responses(400), tags=["keys"])
async def list_keys(
    p: Caller, svc: Svc,
    all_owners: Annotated[bool, flag("all", False),
                          Query(alias="all", description="admins: every owner's keys")] = False,
) -> KeyList:
    keys = await call(svc.list_keys, p, all_owners=all_owners)
    return KeyList(data=[ApiKeyOut.of(k) for k in keys])


@router.delete("/v1/keys/{key_id}", response_model=ApiKeyOut, responses=responses(404), tags=["keys"])
async def revoke_key(p: Caller, svc: Svc, key_id: str) -> ApiKeyOut:
    """Revokes the key at once; the answer is the key with its revoked_at."""
    return ApiKeyOut.of(await call(svc.revoke_key, p, key_id))


@router.get("/v1/owners/{owner}", response_model=OwnerOut, responses=responses(404), tags=["operators"])
async def get_owner(p: Caller, svc: Svc, owner: str) -> OwnerOut:
    return OwnerOut.of(await call(svc.quota, p, owner))


@router.put("/v1/owners/{owner}/quota", response_model=OwnerOut, responses=responses(400, 403), tags=["operators"])
async def set_quota(p: Caller, svc: Svc, owner: str, body: QuotaUpdate) -> OwnerOut:
    """Admins: cap an owner's GPUs; the owner is created if it does not exist yet."""
    return OwnerOut.of(await call(svc.set_quota, p, owner, body))


@router.get("/v1/nodes", response_model=NodeList, responses=responses(403), tags=["operators"])
async def nodes(p: Caller, svc: Svc) -> NodeList:
    """Admins: every node and what holds its slots."""
    return NodeList(data=[NodeOut.of(n) for n in await call(svc.nodes_view, p)])


@router.get("/v1/queue", response_model=QueueList, responses=responses(403), tags=["operators"])
async def queue(p: Caller, svc: Svc) -> QueueList:
    """Admins: what waits for hardware, per pool, in queue order."""
    return QueueList(data=[QueueEntryOut.of(q) for q in await call(svc.queue_view, p)])
