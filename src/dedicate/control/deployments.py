"""v2's use cases: endpoints (routes) and their deployments, on top of the v1 services.

A deployment is a dedicate endpoint record, so creating, changing and deleting one goes through
``Services`` (the same checks, quota, queue and events as v1); this module adds the route: its
name, split and etag, and v2's rules (0/0 stops a deployment, a deployment is deleted once
stopped, an endpoint only once it has none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from dedicate.control.auth import Principal
from dedicate.control.inputs import CreateEndpoint, EndpointPatch
from dedicate.control.inputs_v2 import DeploymentIn, DeploymentPatchIn, EndpointIn, EndpointPatchIn, parse_cap
from dedicate.control.offerings import Offerings
from dedicate.control.owner_models import OwnerModels
from dedicate.control.services import Joining, Services
from dedicate.control.views import EndpointView
from dedicate.domain.endpoints import Intent
from dedicate.domain.errors import Conflict, InvalidRequest, NotFound
from dedicate.domain.offerings import Offer, model_id
from dedicate.domain.records import Endpoint
from dedicate.domain.routes import (
    LEVELS,
    Level,
    Route,
    Visibility,
    check_split,
    deployment_etag,
    deployment_id,
    deployment_name,
    event_type,
    new_route_id,
    qualified,
    record_id,
    scaled_between,
)
from dedicate.domain.scaling import ScalingRules
from dedicate.store.repos import Store

DEFAULT_PAGE = 50
MAX_PAGE = 500
_FILTER = re.compile(r'^\s*name\s*(?P<op>=|:)\s*"(?P<value>[^"]*)"\s*$')
_ORDER = re.compile(r"^\s*(?P<field>created_at|updated_at|createdAt|updatedAt)(\s+(?P<dir>asc|desc))?\s*$")
_CONFIG_PATH = re.compile(r"^projects/[^/]+/configs/(?P<id>[^/]+)$")
_MODEL_PATH = re.compile(r"^projects/[^/]+/models/(?P<id>[^/]+)(?:/revisions/[^/]+)?$")


@dataclass(frozen=True)
class RouteView:
    route: Route
    deployments: list[EndpointView]


def endpoint_not_found(key: str) -> NotFound:
    return NotFound(f"endpoint {key!r} not found in this project; list them with GET "
                    "/v2/projects/{project}/endpoints (`tg endpoints ls`)", code="endpoint_not_found")


def deployment_not_found(key: str) -> NotFound:
    return NotFound(f"deployment {key!r} not found on this endpoint; GET the endpoint to see its deployments",
                    code="deployment_not_found")


def _etag_mismatch(what: str, given: str, current: str) -> Conflict:
    return Conflict(f"{what} changed since it was read: etag {given!r} is not the current {current!r}; "
                    "GET it again and retry with its etag", code="etag_mismatch")


@dataclass(frozen=True)
class EventView:
    """One event as v2 shows it."""

    id: str
    at: datetime
    type: str
    level: Level
    message: str
    deployment: str | None  # the record id; None for the endpoint's own events
    name: str  # the resource's name
    replicas: tuple[int, int] | None = None  # a scaling event's counts, old and new


@dataclass(frozen=True)
class EventQuery:
    deployment_ids: list[str] | None = None
    types: set[str] | None = None
    min_level: Level | None = None
    since: datetime | None = None
    until: datetime | None = None
    subject: str | None = None
    after: str | None = None
    limit: int = 50
    source_kinds: set[str] | None = None  # SOURCE_KIND_ENDPOINT, SOURCE_KIND_DEPLOYMENT


MAX_EVENTS = 10_000
_EVENT_BATCH = 500
ENDPOINT_CREATED_ID = "0"  # the endpoint's own creation: older than every deployment's event


class Deployments:
    def __init__(self, services: Services, offerings: Offerings) -> None:
        self.svc = services
        self.offerings = offerings

    @property
    def store(self) -> Store:
        return self.svc.store

    # reading -------------------------------------------------------------------------------------

    def route(self, owner: str, key: str) -> Route:
        """The endpoint (a route) by id or bare name, if it is this owner's."""
        found = self.store.get_route(key if key.startswith("ep_") else qualified(owner, key))
        if found is None or found.owner != owner:
            raise endpoint_not_found(key)
        return found

    def member(self, owner: str, route_key: str, key: str) -> Endpoint:
        """A deployment of the endpoint, by id or name, without its view (replicas, cost)."""
        return self._member(self.route(owner, route_key), key)

    def _views(self, routes: list[Route]) -> list[RouteView]:
        """The routes with their deployments' views: a page costs the same few reads whatever its size."""
        members = self.store.deployments_of([r.id for r in routes])
        views = {v.endpoint.id: v for v in self.svc.views([ep for r in routes for ep in members[r.id]])}
        return [RouteView(r, [views[ep.id] for ep in members[r.id]]) for r in routes]

    def get_endpoint(self, owner: str, key: str) -> RouteView:
        return self._views([self.route(owner, key)])[0]

    def list_endpoints(self, owner: str | None, *, filter: str | None, order_by: str | None, after: str | None,
                       limit: int) -> tuple[list[RouteView], str | None]:
        """A page of ``owner``'s endpoints; with ``owner`` None, the organization's: every project's
        endpoints shared with it (``VISIBILITY_INTERNAL``)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_PAGE}", param="limit")
        shared = Visibility.INTERNAL if owner is None else None
        name, contains = None, None
        if filter:
            m = _FILTER.fullmatch(filter)
            if m is None:
                raise InvalidRequest('filter supports name="<name>" (exact) and name:"<text>" (contains, * any)',
                                     param="filter")
            if m["op"] == "=" and "*" not in m["value"] and owner is not None:
                name = qualified(owner, m["value"], param="filter")
            elif m["op"] == "=" and "/" in m["value"]:
                name = m["value"]
            elif m["op"] == "=":
                contains = f"/{m['value']}"  # a bare name in the organization: every project's of that name
            else:
                contains = m["value"]
        order, descending = "created_at", False
        if order_by:
            o = _ORDER.fullmatch(order_by)
            if o is None:
                raise InvalidRequest("orderBy must be created_at or updated_at, then asc or desc", param="orderBy")
            order = "updated_at" if o["field"] in ("updated_at", "updatedAt") else "created_at"
            descending = o["dir"] == "desc"
        mark = None
        if after:
            mark = self.store.get_route(after) if after.startswith("ep_") else None
            if mark is None or (mark.owner != owner if owner is not None else mark.visibility is not shared):
                raise InvalidRequest(f"after {after!r} is not a cursor of this listing; pass the next_cursor of "
                                     "the previous page", param="after")
        if contains is not None:  # a substring match reads the listing's routes; an owner has few
            every = self.store.routes_page(owner, name=None, order=order, descending=descending, after=mark,
                                           limit=10_000, visibility=shared)
            pattern = re.compile(".*".join(re.escape(p) for p in contains.split("*")))
            found = [r for r in every if pattern.search(r.name)]
            page, more = found[:limit], len(found) > limit
        else:
            found = self.store.routes_page(owner, name=name, order=order, descending=descending, after=mark,
                                           limit=limit + 1, visibility=shared)
            page, more = found[:limit], len(found) > limit
        return self._views(page), (page[-1].id if more and page else None)

    def get_deployment(self, owner: str, route_key: str, key: str) -> tuple[Route, EndpointView]:
        route = self.route(owner, route_key)
        return route, self.svc.view(self._member(route, key))

    def list_deployments(self, owner: str, route_key: str) -> RouteView:
        return self.get_endpoint(owner, route_key)

    def _member(self, route: Route, key: str) -> Endpoint:
        rec = record_id(key)
        for ep in self.store.deployments_of([route.id])[route.id]:
            if ep.id == rec or ep.deployment_name == key.rpartition("/")[2]:
                return ep
        raise deployment_not_found(key)

    # endpoints -----------------------------------------------------------------------------------

    def create_endpoint(self, owner: str, body: EndpointIn) -> RouteView:
        now = self.svc.clock.now()
        route = Route(id=new_route_id(), owner=owner, name=qualified(owner, body.name),
                      visibility=Visibility(body.visibility), split=(), version=1, created_at=now, updated_at=now)
        self.store.create_route(route)
        return RouteView(route, [])

    def update_endpoint(self, owner: str, key: str, body: EndpointPatchIn, fields: set[str] | None) -> RouteView:
        given = body.model_fields_set - {"etag"} if fields is None else fields
        route = self.route(owner, key)
        if body.etag is not None and body.etag != route.etag:
            raise _etag_mismatch(f"endpoint {route.id}", body.etag, route.etag)
        changes: dict[str, Any] = {}
        if "name" in given:
            changes["name"] = qualified(owner, body.name)
        if "visibility" in given:
            if body.visibility is None:
                raise InvalidRequest("visibility must be VISIBILITY_PRIVATE or VISIBILITY_INTERNAL",
                                     param="visibility")
            changes["visibility"] = body.visibility
        if "trafficSplit" in given or "traffic_split" in given:
            members = {ep.id: deployment_id(ep.id) for ep in self.store.deployments_of([route.id])[route.id]}
            changes["split"] = check_split([(record_id(e.deployment_id) or "", e.weight)
                                            for e in body.traffic_split or []], members)
        if not changes:
            return self.get_endpoint(owner, route.id)
        updated = self.store.update_route(route, changes, self.svc.clock.now())
        if updated is None:
            current = self.route(owner, route.id)
            raise _etag_mismatch(f"endpoint {route.id}", route.etag, current.etag)
        self.svc.wake()
        return self._views([updated])[0]

    def delete_endpoint(self, owner: str, key: str, etag: str | None) -> None:
        route = self.route(owner, key)
        if etag is not None and etag != route.etag:
            raise _etag_mismatch(f"endpoint {route.id}", etag, route.etag)
        left = self.store.deployments_of([route.id])[route.id]
        if left:
            names = ", ".join(f"{deployment_id(ep.id)} ({ep.deployment_name})" for ep in left)
            raise Conflict(f"endpoint {route.name} still has deployments: {names}; delete them first "
                           "(scale each to 0/0, then DELETE it), or use `tg endpoints rm --force`",
                           code="endpoint_has_deployments")
        if not self.store.delete_route(route, self.svc.clock.now()):
            raise endpoint_not_found(key)

    # deployments ---------------------------------------------------------------------------------

    def _offer(self, owner: str, body: DeploymentIn) -> Offer:
        if not body.config:
            raise InvalidRequest("config is required: a projects/{project}/configs/{config} of the model, from "
                                 "GET /v2/projects/{project}/configs?referenceModelId=<model id>", param="config")
        m = _CONFIG_PATH.fullmatch(body.config)
        if m is None:
            raise InvalidRequest(f"config {body.config!r} is not a config path: projects/{{project}}/configs/{{id}}",
                                 param="config")
        owned = OwnerModels(self.svc, self.offerings)
        offer = owned.config(owner, m["id"])
        if body.model:
            mm = _MODEL_PATH.fullmatch(body.model)
            if mm is None:
                raise InvalidRequest(f"model {body.model!r} is not a model path: "
                                     "projects/{project}/models/{model}[/revisions/{revision}]", param="model")
            if mm["id"] != model_id(offer.model):
                # a fine-tune on one of its base's configs (tg picks the base's: its configs?referenceModelId
                # asks by baseModelId): the same shape, with the fine-tune's weights
                tuned = self.store.owner_model(mm["id"])
                if tuned is not None and tuned.owner == owner and tuned.base == offer.model.name:
                    mine = [o for o in owned.offers(tuned) if o.hardware.id == offer.hardware.id]
                    if mine:
                        return mine[0]
                raise InvalidRequest(f"config {m['id']} is for {offer.model.name}, not the model {body.model}; "
                                     "choose a config of that model", param="config")
        return offer

    def _zone(self, placement: dict[str, Any] | None) -> str | None:
        if not placement:
            return None
        if "profile" in placement:
            raise InvalidRequest("placement profiles are not supported by dedicate; use placement.inline.regions",
                                 param="placement.profile")
        inline = placement.get("inline") or {}
        if not isinstance(inline, dict):
            raise InvalidRequest("placement.inline must be an object", param="placement.inline")
        if (inline.get("compliancePolicy") or {}).get("hipaa"):
            raise InvalidRequest("no region of this installation is certified for HIPAA",
                                 param="placement.inline.compliancePolicy")
        regions = inline.get("regions") or []
        zones = self.svc.availability_zones()
        known = [r for r in regions if r in zones]
        if regions and not known:
            raise InvalidRequest(f"placement.inline.regions {regions} are not regions here; choose from "
                                 f"{', '.join(zones)}", param="placement.inline.regions")
        return known[0] if known else None

    def create_deployment(self, principal: Principal, owner: str, route_key: str, body: DeploymentIn, *,
                          validate_only: bool) -> tuple[Route, EndpointView]:
        route = self.route(owner, route_key)
        name = deployment_name(body.name)
        if any(ep.deployment_name == name for ep in self.store.deployments_of([route.id])[route.id]):
            raise Conflict(f"deployment {name!r} already exists on endpoint {route.name}; pick another name",
                           code="deployment_exists")
        cap = parse_cap(body.max_concurrent_requests_per_replica)
        offer = self._offer(owner, body)
        lo = body.autoscaling.min_replicas if body.autoscaling.min_replicas is not None else 1
        hi = body.autoscaling.max_replicas if body.autoscaling.max_replicas is not None else lo
        stopped = lo == 0 and hi == 0
        rules = body.autoscaling.parsed()
        req = CreateEndpoint.model_validate({
            "model": offer.model.name, "hardware": offer.hardware.id,
            "autoscaling": {"min_replicas": lo, "max_replicas": max(hi, 1) if stopped else hi,
                            "target_concurrency": rules.target},
            "inactive_timeout": body.inactive_timeout or None, "state": "STOPPED" if stopped else "STARTED",
            "availability_zone": self._zone(body.placement)})
        caller = replace(principal, owner=owner)  # an admin acting in a project acts as its owner
        stored = rules.merged(ScalingRules())
        joining = Joining(route, name, None if stored == ScalingRules() else stored.to_json(), cap)
        view = self.svc.create(caller, req, dry_run=validate_only, into=joining)
        if not validate_only:
            route = self.route(owner, route.id)  # a first deployment took the split
        return route, view

    def update_deployment(self, principal: Principal, owner: str, route_key: str, key: str,
                          body: DeploymentPatchIn, fields: set[str] | None) -> tuple[Route, EndpointView]:
        route = self.route(owner, route_key)
        ep = self._member(route, key)
        if body.etag is not None and body.etag != deployment_etag(ep):
            raise _etag_mismatch(f"deployment {deployment_id(ep.id)}", body.etag, deployment_etag(ep))
        given = {f for f in body.model_fields_set if f != "etag"} if fields is None else \
            {{"inactiveTimeout": "inactive_timeout", "maxConcurrentRequestsPerReplica":
              "max_concurrent_requests_per_replica"}.get(f, f) for f in fields}
        if "max_concurrent_requests_per_replica" in given:
            cap = parse_cap(body.max_concurrent_requests_per_replica)
            if cap != ep.max_concurrency:  # the gateway reads it on its next snapshot: no restart
                ep = self._write_setting(ep, "per-replica cap", max_concurrency=cap)
        if "name" in given and body.name is not None and deployment_name(body.name) != ep.deployment_name:
            raise InvalidRequest("a deployment cannot be renamed yet; create one with the new name",
                                 param="name")
        patch: dict[str, Any] = {}
        if "autoscaling" in given and body.autoscaling is not None:
            a = body.autoscaling
            parsed = a.parsed()
            rules = parsed.merged(ScalingRules.from_json(ep.scaling_rules))
            if rules != ScalingRules.from_json(ep.scaling_rules):
                self._set_rules(ep, rules)
            if parsed.target is not None:
                patch["autoscaling"] = {"target_concurrency": parsed.target}
            if a.min_replicas is not None or a.max_replicas is not None:
                stopped = ep.intent is Intent.STOP
                lo = a.min_replicas if a.min_replicas is not None else (0 if stopped else ep.min_replicas)
                hi = a.max_replicas if a.max_replicas is not None else (0 if stopped else ep.max_replicas)
                if lo == 0 and hi == 0:
                    patch["state"] = "STOPPED"
                else:
                    if hi == 0 or lo > hi:
                        raise InvalidRequest(f"autoscaling.minReplicas ({lo}) must not exceed maxReplicas ({hi}); "
                                             "0/0 stops the deployment", param="autoscaling")
                    patch["autoscaling"] = {**patch.get("autoscaling", {}), "min_replicas": lo, "max_replicas": hi}
                    if stopped:
                        patch["state"] = "STARTED"
        if "inactive_timeout" in given:
            patch["inactive_timeout"] = body.inactive_timeout or 0
        view = self.svc.update(replace(principal, owner=owner), ep.id, EndpointPatch.model_validate(patch)) \
            if patch else self.svc.view(self._member(route, deployment_id(ep.id)))
        return route, view

    def _set_rules(self, ep: Endpoint, rules: ScalingRules) -> None:
        self._write_setting(ep, "scaling rules", scaling_rules=rules.to_json())

    def _write_setting(self, ep: Endpoint, what: str, **changes: Any) -> Endpoint:
        """A setting of the deployment in a guarded write of its own (retried on a concurrent change)."""
        for _ in range(5):
            if self.store.update_endpoint(ep, self.svc.clock.now(), ("updated", f"{what} set"), **changes):
                self.svc.wake()
                fresh = self.store.get_endpoint(ep.id)
                return fresh if fresh is not None else ep
            again = self.store.get_endpoint(ep.id)
            if again is None:
                raise deployment_not_found(deployment_id(ep.id))
            ep = again
        raise InvalidRequest("the deployment changed while updating it; try again")

    def delete_deployment(self, principal: Principal, owner: str, route_key: str, key: str,
                          etag: str | None) -> None:
        route = self.route(owner, route_key)
        ep = self._member(route, key)
        if etag is not None and etag != deployment_etag(ep):
            raise _etag_mismatch(f"deployment {deployment_id(ep.id)}", etag, deployment_etag(ep))
        if ep.intent is not Intent.STOP:
            raise Conflict(f"deployment {deployment_id(ep.id)} is running; scale it to 0/0 first (PATCH with "
                           'updateMask=autoscaling {"autoscaling":{"minReplicas":0,"maxReplicas":0}}), then delete '
                           "it", code="deployment_running")
        self.svc.delete(replace(principal, owner=owner), ep.id, keep_route=True)

    # events --------------------------------------------------------------------------------------

    def events(self, owner: str, key: str, q: EventQuery) -> tuple[Route, list[EventView], str | None]:
        """The endpoint and its events, newest first: its deployments' (deleted ones' too) from the event
        log, then its own creation; filtered, a page at a time (the cursor is the last event's id)."""
        if not 1 <= q.limit <= MAX_EVENTS:
            raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_EVENTS}", param="limit")
        route = self.route(owner, key)
        records = None if q.deployment_ids is None else [record_id(x) or "" for x in q.deployment_ids]
        if records is not None and "" in records:
            raise InvalidRequest("deploymentIds must be dep_… ids", param="deploymentIds")
        if q.subject is not None:  # a subject is a deployment; the endpoint is the subject of its own events
            rec = record_id(q.subject)
            records = [rec] if rec is not None and (records is None or rec in records) else []
        if q.after == ENDPOINT_CREATED_ID:
            return route, [], None  # the endpoint's creation was the last event there is
        if q.after is not None and not q.after.isdigit():
            raise InvalidRequest(f"after {q.after!r} is not a cursor of this listing; pass the next_cursor of the "
                                 "previous page", param="after")
        before = int(q.after) if q.after is not None else None
        floor = LEVELS.index(q.min_level) if q.min_level is not None else 0

        def wanted(v: EventView) -> bool:
            kind = "SOURCE_KIND_DEPLOYMENT" if v.deployment is not None else "SOURCE_KIND_ENDPOINT"
            return (q.types is None or v.type in q.types) and LEVELS.index(v.level) >= floor and \
                (q.source_kinds is None or kind in q.source_kinds)

        out: list[EventView] = []
        while records != [] and len(out) <= q.limit and before != 0:
            rows = self.store.route_events(route.id, deployments=records, before=before, since=q.since,
                                           until=q.until, batch=_EVENT_BATCH)
            for ev, dep_name in rows:
                kind, level = event_type(ev.kind)
                v = EventView(str(ev.id), ev.at, kind, level, ev.message, ev.endpoint_id, f"{route.name}/{dep_name}",
                              scaled_between(ev.message) if kind == "deployment.scaled" else None)
                if wanted(v):
                    out.append(v)
            if len(rows) < _EVENT_BATCH:
                before = 0  # every deployment event is read: the endpoint's own comes last
                break
            before = rows[-1][0].id
        made = EventView(ENDPOINT_CREATED_ID, route.created_at, "endpoint.created", Level.INFO,
                         f"endpoint {route.name} created", None, route.name)
        if before == 0 and q.deployment_ids is None and q.subject is None and wanted(made) and \
                (q.since is None or made.at >= q.since) and (q.until is None or made.at <= q.until):
            out.append(made)
        page = out[:q.limit]
        more = len(out) > q.limit and page[-1].id != ENDPOINT_CREATED_ID
        return route, page, (page[-1].id if more else None)
