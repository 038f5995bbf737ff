"""/v1/endpoints: Together's flat management API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from dedicate.api import schemas
from dedicate.api.deps import call, flag, json_body, principal, services
from dedicate.domain.errors import InvalidRequest

router = APIRouter(prefix="/v1")


@router.get("/endpoints")
async def list_endpoints(request: Request) -> dict[str, Any]:
    p = await principal(request)
    q = request.query_params
    kind = q.get("type")
    if kind not in (None, "", "dedicated", "serverless"):
        raise InvalidRequest("type must be dedicated or serverless", param="type")
    usage = q.get("usage_type")
    if usage not in (None, "", "on-demand", "reserved"):
        raise InvalidRequest("usage_type must be on-demand or reserved", param="usage_type")
    mine = flag(q.get("mine"), "mine", True)
    eps = [] if kind == "serverless" or usage == "reserved" else \
        await call(services(request).list_endpoints, p, mine=mine)
    return {"object": "list", "data": [schemas.list_endpoint(e) for e in eps]}


@router.post("/endpoints")
async def create_endpoint(request: Request) -> dict[str, Any]:
    p = await principal(request)
    body = await json_body(request)
    q = request.query_params
    dry_run = flag(q.get("dry_run"), "dry_run", False)
    view = await call(services(request).create, p, body, dry_run=dry_run,
                      availability_zone=q.get("availability_zone"))
    return schemas.dedicated_endpoint(view, dry_run=dry_run)


@router.get("/endpoints/{endpoint_id}")
async def get_endpoint(request: Request, endpoint_id: str) -> dict[str, Any]:
    p = await principal(request)
    return schemas.dedicated_endpoint(await call(services(request).get, p, endpoint_id))


@router.patch("/endpoints/{endpoint_id}")
async def update_endpoint(request: Request, endpoint_id: str) -> dict[str, Any]:
    p = await principal(request)
    body = await json_body(request)
    return schemas.dedicated_endpoint(await call(services(request).update, p, endpoint_id, body))


@router.delete("/endpoints/{endpoint_id}", status_code=204)
async def delete_endpoint(request: Request, endpoint_id: str) -> Response:
    p = await principal(request)
    await call(services(request).delete, p, endpoint_id)
    return Response(status_code=204)


@router.post("/endpoints/{endpoint_id}/start")
async def start_endpoint(request: Request, endpoint_id: str) -> dict[str, Any]:
    p = await principal(request)
    return schemas.dedicated_endpoint(
        await call(services(request).update, p, endpoint_id, {"state": "STARTED"}))


@router.post("/endpoints/{endpoint_id}/stop")
async def stop_endpoint(request: Request, endpoint_id: str) -> dict[str, Any]:
    p = await principal(request)
    return schemas.dedicated_endpoint(
        await call(services(request).update, p, endpoint_id, {"state": "STOPPED"}))


@router.post("/endpoints/{endpoint_id}/scale")
async def scale_endpoint(request: Request, endpoint_id: str) -> dict[str, Any]:
    p = await principal(request)
    body = await json_body(request)
    return schemas.dedicated_endpoint(await call(services(request).scale, p, endpoint_id, body))


@router.get("/endpoints/{endpoint_id}/replicas")
async def endpoint_replicas(request: Request, endpoint_id: str) -> dict[str, Any]:
    p = await principal(request)
    all_ = flag(request.query_params.get("all"), "all", False)
    replicas = await call(services(request).replicas, p, endpoint_id, include_stopped=all_)
    return {"object": "list", "data": [schemas.replica(r) for r in replicas]}


@router.get("/endpoints/{endpoint_id}/events")
async def endpoint_events(request: Request, endpoint_id: str) -> dict[str, Any]:
    p = await principal(request)
    events = await call(services(request).events, p, endpoint_id)
    return {"object": "list", "data": [schemas.event(e) for e in events]}
