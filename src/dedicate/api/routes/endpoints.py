"""/v1/endpoints: Together's flat management API."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from dedicate.api.deps import BoundedRoute, Caller, Svc, call, flag, one_of, whole
from dedicate.api.errors import responses
from dedicate.api.schemas import DedicatedEndpoint, EndpointList, EventList, EventOut, ReplicaList, ReplicaOut
from dedicate.control.inputs import STARTED, STOPPED, CreateEndpoint, EndpointPatch, Scale
from dedicate.control.services import DEFAULT_PAGE, MAX_PAGE
from dedicate.control.views import EndpointPage

router = APIRouter(prefix="/v1", tags=["endpoints"], route_class=BoundedRoute)
ById = responses(400, 404)


@router.get("/endpoints", response_model=EndpointList, responses=responses(400))
async def list_endpoints(
    p: Caller, svc: Svc,
    kind: Annotated[Literal["dedicated", "serverless"] | None, one_of("type", "dedicated", "serverless"),
                    Query(alias="type", description="serverless: always empty here")] = None,
    mine: Annotated[bool, flag("mine", True),
                    Query(description="false: an admin sees every owner's endpoints (true/false, 1/0, yes/no)")] = True,
    usage_type: Annotated[Literal["on-demand", "reserved"] | None, one_of("usage_type", "on-demand", "reserved"),
                          Query(description="reserved: always empty here")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"endpoints per page, at most {MAX_PAGE}"),
                     whole("limit", 1, MAX_PAGE)] = DEFAULT_PAGE,
    after: Annotated[str | None, Query(description="the next_cursor of the previous page")] = None,
) -> EndpointList:
    """Oldest first, without deleted endpoints; a page at a time."""
    if kind == "serverless" or usage_type == "reserved":
        return EndpointList.of(EndpointPage([], has_more=False))
    return EndpointList.of(await call(svc.list_endpoints, p, mine=mine, limit=limit, after=after))


@router.post("/endpoints", response_model=DedicatedEndpoint, responses=responses(400))
async def create_endpoint(
    p: Caller, svc: Svc, body: CreateEndpoint,
    dry_run: Annotated[bool, flag("dry_run", False),
                       Query(description="check everything, store nothing, answer what would be made")] = False,
    availability_zone: Annotated[str | None, Query(description="if the body names none")] = None,
) -> DedicatedEndpoint:
    view = await call(svc.create, p, body, dry_run=dry_run, availability_zone=availability_zone or None)
    return DedicatedEndpoint.of(view, dry_run=dry_run)


@router.get("/endpoints/{endpoint_id}", response_model=DedicatedEndpoint, responses=ById)
async def get_endpoint(p: Caller, svc: Svc, endpoint_id: str) -> DedicatedEndpoint:
    return DedicatedEndpoint.of(await call(svc.get, p, endpoint_id))


@router.patch("/endpoints/{endpoint_id}", response_model=DedicatedEndpoint, responses=responses(400, 404, 409))
async def update_endpoint(p: Caller, svc: Svc, endpoint_id: str, body: EndpointPatch) -> DedicatedEndpoint:
    """Only the fields given change; a failed PATCH changes nothing."""
    return DedicatedEndpoint.of(await call(svc.update, p, endpoint_id, body))


@router.delete("/endpoints/{endpoint_id}", status_code=204, response_class=Response, responses=ById)
async def delete_endpoint(p: Caller, svc: Svc, endpoint_id: str) -> Response:
    """204 with an empty body; the replicas stop right after."""
    await call(svc.delete, p, endpoint_id)
    return Response(status_code=204)


@router.post("/endpoints/{endpoint_id}/start", response_model=DedicatedEndpoint, responses=responses(400, 404, 409))
async def start_endpoint(p: Caller, svc: Svc, endpoint_id: str) -> DedicatedEndpoint:
    """PATCH with {"state": "STARTED"}."""
    return DedicatedEndpoint.of(await call(svc.update, p, endpoint_id, STARTED))


@router.post("/endpoints/{endpoint_id}/stop", response_model=DedicatedEndpoint, responses=responses(400, 404, 409))
async def stop_endpoint(p: Caller, svc: Svc, endpoint_id: str) -> DedicatedEndpoint:
    """PATCH with {"state": "STOPPED"}."""
    return DedicatedEndpoint.of(await call(svc.update, p, endpoint_id, STOPPED))


@router.post("/endpoints/{endpoint_id}/scale", response_model=DedicatedEndpoint, responses=ById)
async def scale_endpoint(p: Caller, svc: Svc, endpoint_id: str, body: Scale) -> DedicatedEndpoint:
    """Sets the desired replica count, clamped to the bounds; capacity decides how many run."""
    return DedicatedEndpoint.of(await call(svc.scale, p, endpoint_id, body))


@router.get("/endpoints/{endpoint_id}/replicas", response_model=ReplicaList, responses=ById)
async def endpoint_replicas(
    p: Caller, svc: Svc, endpoint_id: str,
    include_stopped: Annotated[bool, flag("all", False), Query(alias="all", description="also the stopped replicas")
                               ] = False,
) -> ReplicaList:
    replicas = await call(svc.replicas, p, endpoint_id, include_stopped=include_stopped)
    return ReplicaList(data=[ReplicaOut.of(r) for r in replicas])


@router.get("/endpoints/{endpoint_id}/events", response_model=EventList, responses=ById)
async def endpoint_events(p: Caller, svc: Svc, endpoint_id: str) -> EventList:
    """The latest 200 events, oldest first."""
    return EventList(data=[EventOut.of(e) for e in await call(svc.events, p, endpoint_id)])
