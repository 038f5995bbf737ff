"""v2 endpoints and deployments: ``/v2/projects/{project}/endpoints[/{e}[/deployments[/{d}]]]``.

The same objects as v1's: every v1 endpoint is a v2 endpoint with one deployment (``default``),
and a v2 deployment is listed by ``GET /v1/endpoints`` under its own name. The experiment
collections that ``tg endpoints get`` and ``deploy`` read unconditionally (A/B, shadow,
rollouts, adapters) exist and are empty: dedicate runs no experiments yet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from dedicate.api.deps import BoundedRoute, Caller, Svc, call, flag, one_of, time_param, whole
from dedicate.api.errors import responses
from dedicate.api.schemas_v2_analytics import AnalyticsOut
from dedicate.api.schemas_v2_endpoints import (
    DeploymentOut,
    DeploymentPage,
    EmptyPage,
    EndpointOut,
    EndpointPage,
    EventOut,
    EventPage,
    route_shares,
)
from dedicate.control.analytics import GRANULARITY, analytics
from dedicate.control.deployments import DEFAULT_PAGE, MAX_EVENTS, MAX_PAGE, Deployments, EventQuery
from dedicate.control.inputs_v2 import DeploymentIn, DeploymentPatchIn, EndpointIn, EndpointPatchIn, parse_mask
from dedicate.control.offerings import Offerings
from dedicate.control.projects import owner_in
from dedicate.control.services import Services
from dedicate.domain.errors import InvalidRequest, NotFound
from dedicate.domain.projects import Organization
from dedicate.domain.routes import LEVELS, Level, traffic_shares

router = APIRouter(route_class=BoundedRoute, tags=["v2 endpoints"])
BASE = "/v2/projects/{project_id}/endpoints"
ENDPOINT_FIELDS = ("name", "visibility", "trafficSplit")
DEPLOYMENT_FIELDS = ("autoscaling", "inactiveTimeout", "maxConcurrentRequestsPerReplica", "name")

Mask = Annotated[str | None, Query(alias="updateMask", description="comma-separated camelCase fields to change")]
Etag = Annotated[str | None, Query(description="the etag last read; a different one is a 409")]


def down_s(svc: Services) -> float:
    """The installation's down window: a deployment's when it sets none."""
    return svc.settings.autoscaling.stabilisation_s


def deployments(svc: Services) -> Deployments:
    return Deployments(svc, Offerings(svc, svc.started_at))


# endpoints -------------------------------------------------------------------------------------

@router.post(BASE, response_model=EndpointOut, responses=responses(400, 404, 409))
async def create_endpoint(p: Caller, svc: Svc, project_id: str, body: EndpointIn) -> EndpointOut:
    """An endpoint with no deployment yet (unrouted); 409 if the name is taken in the project."""
    owner = owner_in(p, project_id)
    rv = await call(deployments(svc).create_endpoint, owner, body)
    return EndpointOut.of(rv, svc.catalog, down_s(svc))


@router.get(BASE, response_model=EndpointPage, responses=responses(400, 404))
async def list_endpoints(
    p: Caller, svc: Svc, project_id: str,
    filter: Annotated[str | None, Query(description='name="<name>" (exact) or name:"<text>" (contains)')] = None,
    order_by: Annotated[str | None, Query(alias="orderBy", description="created_at|updated_at [asc|desc]")] = None,
    limit: Annotated[int, whole("limit", 1, MAX_PAGE), Query(description=f"at most {MAX_PAGE}")] = DEFAULT_PAGE,
    after: Annotated[str | None, Query(description="the next_cursor of the previous page")] = None,
) -> EndpointPage:
    owner = owner_in(p, project_id)
    views, cursor = await call(deployments(svc).list_endpoints, owner, filter=filter or None,
                               order_by=order_by or None, after=after or None, limit=limit)
    return EndpointPage(data=[EndpointOut.of(v, svc.catalog, down_s(svc)) for v in views], next_cursor=cursor)


@router.get("/v2/organizations/{organization_id}/endpoints", response_model=EndpointPage,
            responses=responses(400, 404))
async def list_organization_endpoints(
    p: Caller, svc: Svc, organization_id: str,
    filter: Annotated[str | None, Query(description='name="<slug>/<name>" or name:"<text>"')] = None,
    order_by: Annotated[str | None, Query(alias="orderBy", description="created_at|updated_at [asc|desc]")] = None,
    limit: Annotated[int, whole("limit", 1, MAX_PAGE), Query(description=f"at most {MAX_PAGE}")] = DEFAULT_PAGE,
    after: Annotated[str | None, Query(description="the next_cursor of the previous page")] = None,
) -> EndpointPage:
    """Every project's endpoints shared with the organization (VISIBILITY_INTERNAL)."""
    org = Organization.named(svc.settings.organization)
    if organization_id != org.id:
        raise NotFound(f"organization {organization_id!r} not found; this installation is {org.id} "
                       "(GET /v3/whoami)", code="organization_not_found")
    views, cursor = await call(deployments(svc).list_endpoints, None, filter=filter or None,
                               order_by=order_by or None, after=after or None, limit=limit)
    return EndpointPage(data=[EndpointOut.of(v, svc.catalog, down_s(svc)) for v in views], next_cursor=cursor)


@router.get(BASE + "/{endpoint_id}", response_model=EndpointOut, responses=responses(404))
async def get_endpoint(p: Caller, svc: Svc, project_id: str, endpoint_id: str) -> EndpointOut:
    """By id (``ep_…``) or by name."""
    rv = await call(deployments(svc).get_endpoint, owner_in(p, project_id), endpoint_id)
    return EndpointOut.of(rv, svc.catalog, down_s(svc))


@router.patch(BASE + "/{endpoint_id}", response_model=EndpointOut, responses=responses(400, 404, 409))
async def update_endpoint(p: Caller, svc: Svc, project_id: str, endpoint_id: str, body: EndpointPatchIn,
                          update_mask: Mask = None) -> EndpointOut:
    """Name, visibility, traffic split; an etag that is not the current one changes nothing (409)."""
    owner = owner_in(p, project_id)
    fields = parse_mask(update_mask, ENDPOINT_FIELDS)
    rv = await call(deployments(svc).update_endpoint, owner, endpoint_id, body, fields)
    return EndpointOut.of(rv, svc.catalog, down_s(svc))


@router.delete(BASE + "/{endpoint_id}", status_code=204, response_class=Response, responses=responses(404, 409))
async def delete_endpoint(p: Caller, svc: Svc, project_id: str, endpoint_id: str, etag: Etag = None) -> Response:
    """204 with no body (what the 3.1.1 SDK takes for `{}`); only an endpoint without deployments:
    409 names the ones left."""
    await call(deployments(svc).delete_endpoint, owner_in(p, project_id), endpoint_id, etag or None)
    return Response(status_code=204)


# deployments -----------------------------------------------------------------------------------

@router.post(BASE + "/{endpoint_id}/deployments", response_model=DeploymentOut, responses=responses(400, 404, 409))
async def create_deployment(
    p: Caller, svc: Svc, project_id: str, endpoint_id: str, body: DeploymentIn,
    validate_only: Annotated[bool, flag("validateOnly", False), Query(alias="validateOnly",
                                                                     description="check and price; create nothing")
                             ] = False,
) -> DeploymentOut:
    """A model on a config; it provisions in the background. The first deployment of an unrouted
    endpoint takes its traffic (without changing the endpoint's etag)."""
    owner = owner_in(p, project_id)
    route, view = await call(deployments(svc).create_deployment, p, owner, endpoint_id, body,
                             validate_only=validate_only)
    share = None if validate_only else traffic_shares(route.split, {}).get(view.endpoint.id, 0.0)
    return DeploymentOut.of(route, view, svc.catalog, share, down_s(svc))


@router.get(BASE + "/{endpoint_id}/deployments", response_model=DeploymentPage, responses=responses(404))
async def list_deployments(p: Caller, svc: Svc, project_id: str, endpoint_id: str) -> DeploymentPage:
    """Every deployment of the endpoint, oldest first (one page: an endpoint holds few)."""
    rv = await call(deployments(svc).list_deployments, owner_in(p, project_id), endpoint_id)
    shares = route_shares(rv)
    return DeploymentPage(data=[DeploymentOut.of(rv.route, v, svc.catalog, shares.get(v.endpoint.id), down_s(svc))
                                for v in rv.deployments], next_cursor=None)


@router.get(BASE + "/{endpoint_id}/deployments/{deployment_id}", response_model=DeploymentOut,
            responses=responses(404))
async def get_deployment(p: Caller, svc: Svc, project_id: str, endpoint_id: str,
                         deployment_id: str) -> DeploymentOut:
    """By id (``dep_…``) or by name."""
    route, view = await call(deployments(svc).get_deployment, owner_in(p, project_id), endpoint_id, deployment_id)
    return DeploymentOut.of(route, view, svc.catalog, None, down_s(svc))


@router.patch(BASE + "/{endpoint_id}/deployments/{deployment_id}", response_model=DeploymentOut,
              responses=responses(400, 404, 409))
async def update_deployment(p: Caller, svc: Svc, project_id: str, endpoint_id: str, deployment_id: str,
                            body: DeploymentPatchIn, update_mask: Mask = None) -> DeploymentOut:
    """``autoscaling`` merges with the bounds; 0/0 stops the deployment, other bounds start it again."""
    owner = owner_in(p, project_id)
    fields = parse_mask(update_mask, DEPLOYMENT_FIELDS)
    route, view = await call(deployments(svc).update_deployment, p, owner, endpoint_id, deployment_id, body, fields)
    return DeploymentOut.of(route, view, svc.catalog, None, down_s(svc))


@router.delete(BASE + "/{endpoint_id}/deployments/{deployment_id}", status_code=204, response_class=Response,
               responses=responses(404, 409))
async def delete_deployment(p: Caller, svc: Svc, project_id: str, endpoint_id: str, deployment_id: str,
                            etag: Etag = None) -> Response:
    """204; once stopped (0/0, even while its replicas are still stopping); a running one is a 409."""
    await call(deployments(svc).delete_deployment, p, owner_in(p, project_id), endpoint_id, deployment_id,
               etag or None)
    return Response(status_code=204)


# events ----------------------------------------------------------------------------------------

def _csv(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


@router.get(BASE + "/{endpoint_id}/events", response_model=EventPage, responses=responses(400, 404))
async def list_events(
    p: Caller, svc: Svc, project_id: str, endpoint_id: str,
    deployment_ids: Annotated[str | None, Query(alias="deploymentIds", description="dep_… ids, comma-separated")
                              ] = None,
    types: Annotated[str | None, Query(description="event types, comma-separated")] = None,
    min_level: Annotated[str | None, one_of("minLevel", *LEVELS), Query(alias="minLevel")] = None,
    since: Annotated[datetime | None, time_param("since"), Query(description="RFC 3339")] = None,
    until: Annotated[datetime | None, time_param("until"), Query(description="RFC 3339")] = None,
    subject_id: Annotated[str | None, Query(alias="subjectId", description="a deployment's id")] = None,
    source_kinds: Annotated[str | None, Query(alias="sourceKinds",
                                              description="SOURCE_KIND_ENDPOINT and/or SOURCE_KIND_DEPLOYMENT")
                            ] = None,
    limit: Annotated[int, whole("limit", 1, MAX_EVENTS), Query(description=f"at most {MAX_EVENTS}")] = 50,
    after: Annotated[str | None, Query(description="the next_cursor of the previous page")] = None,
) -> EventPage:
    """Newest first: the deployments' events from dedicate's event log, and the endpoint's creation."""
    kinds = _csv(source_kinds)
    for kind in kinds or ():
        if kind not in ("SOURCE_KIND_ENDPOINT", "SOURCE_KIND_DEPLOYMENT"):
            raise InvalidRequest("sourceKinds takes SOURCE_KIND_ENDPOINT and SOURCE_KIND_DEPLOYMENT",
                                 param="sourceKinds")
    owner = owner_in(p, project_id)
    q = EventQuery(deployment_ids=_csv(deployment_ids), types=set(_csv(types) or ()) or None,
                   min_level=Level(min_level) if min_level else None, since=since, until=until,
                   subject=subject_id or None, after=after or None, limit=limit,
                   source_kinds=set(kinds) if kinds else None)
    route, found, cursor = await call(deployments(svc).events, owner, endpoint_id, q)
    return EventPage(data=[EventOut.of(route, v) for v in found], next_cursor=cursor)


@router.get(BASE + "/{endpoint_id}/analytics", response_model=AnalyticsOut, responses=responses(400, 404))
async def endpoint_analytics(
    p: Caller, svc: Svc, project_id: str, endpoint_id: str,
    deployment_id: Annotated[str | None, Query(alias="deploymentId", description="one deployment's only")] = None,
    start_time: Annotated[datetime | None, time_param("startTime"), Query(alias="startTime",
                                                                          description="RFC 3339; default a day "
                                                                                      "before endTime")] = None,
    end_time: Annotated[datetime | None, time_param("endTime"), Query(alias="endTime",
                                                                      description="RFC 3339; default now")] = None,
    granularity: Annotated[str, one_of("granularity", *GRANULARITY), Query(description="1m, 1h or 1d")] = "1d",
    include_time_series: Annotated[bool, flag("includeTimeSeries", False), Query(alias="includeTimeSeries")
                                   ] = False,
) -> AnalyticsOut:
    """Requests, failures by status, tokens, TTFT and latency percentiles, per deployment and in all, from
    what the gateways recorded per minute (kept a week), with replica counts now."""
    found = await call(analytics, deployments(svc), owner_in(p, project_id), endpoint_id,
                       deployment=deployment_id or None, start=start_time, end=end_time,
                       granularity=granularity or "1d", series=include_time_series)
    return AnalyticsOut.of(found)


# the collections tg reads and dedicate does not fill yet -----------------------------------------

async def _empty(p: Caller, svc: Svc, project_id: str, endpoint_id: str) -> EmptyPage:
    await call(deployments(svc).route, owner_in(p, project_id), endpoint_id)  # 404 for no endpoint
    return EmptyPage(data=[], next_cursor=None)


for collection in ("abExperiments", "shadowExperiments", "rollouts"):
    router.add_api_route(f"{BASE}/{{endpoint_id}}/{collection}", _empty, methods=["GET"], response_model=EmptyPage,
                         responses=responses(404), summary=f"List {collection} (none yet)",
                         name=f"list_{collection}")


@router.get(BASE + "/{endpoint_id}/deployments/{deployment_id}/adapters", response_model=EmptyPage,
            responses=responses(404))
async def list_adapters(p: Caller, svc: Svc, project_id: str, endpoint_id: str, deployment_id: str) -> EmptyPage:
    """No deployment serves adapters yet."""
    await call(deployments(svc).member, owner_in(p, project_id), endpoint_id, deployment_id)  # 404 for none
    return EmptyPage(data=[], next_cursor=None)

