"""Use cases behind the faces: thin routers call these with keyword arguments.

Every accepted change is durable (committed) before the method returns; the
reconciler is then woken to act on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from dedicate.autoscaler.policy import PolicyState
from dedicate.clock import Clock
from dedicate.control.auth import Principal
from dedicate.control.autoscaling import target_for
from dedicate.control.billing import Billing
from dedicate.control.capacity import engine_for, node_views
from dedicate.control.inputs import CreateEndpoint, EndpointPatch, NewKey, QuotaUpdate, Scale
from dedicate.control.models import model_dir
from dedicate.control.views import (
    AVAILABLE,
    INSUFFICIENT,
    UNAVAILABLE,
    EndpointPage,
    EndpointView,
    HardwareOffer,
    NodeReport,
    OwnerQuota,
    QueueEntry,
    SlotHolder,
)
from dedicate.domain.capacity import GB, fits, memory_needed_bytes, usable_bytes
from dedicate.domain.catalog import Catalog, model_unknown
from dedicate.domain.endpoints import (
    EndpointState,
    Intent,
    RequestedState,
    check_transition,
    hardware_unchangeable,
    new_endpoint_id,
    new_endpoint_name,
    validate_autoscaling,
    validate_owner,
)
from dedicate.domain.errors import (
    Forbidden,
    HardwareUnavailable,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
)
from dedicate.domain.hardware import Hardware
from dedicate.domain.modelbook import ModelBook
from dedicate.domain.models import ModelSpec
from dedicate.domain.records import ApiKey, Endpoint, Event, Replica
from dedicate.domain.replicas import ReplicaStatus
from dedicate.domain.routes import Route, SplitEntry, Visibility, route_id_for
from dedicate.engines import registry
from dedicate.metering.ledger import Billed
from dedicate.metering.rating import predict
from dedicate.runtimes.base import Node
from dedicate.scheduler.placement import NodeView, NoPlacement, place
from dedicate.settings import Settings
from dedicate.store.repos import EndpointDetail, Store

DEFAULT_DEPLOYMENT = "default"  # the deployment name of an endpoint made through v1
DEFAULT_PAGE = 100  # endpoints per page of GET /v1/endpoints when no limit is given
MAX_PAGE = 1000


@dataclass(frozen=True)
class Joining:
    """Where a v2 deployment goes: its route and its name there."""

    route: Route
    name: str
    scaling_rules: str | None = None  # v2's windows and rate policies, as JSON
    max_concurrency: int | None = None  # requests one replica is sent at once at most


def not_found(key: str) -> NotFound:
    return NotFound(f"endpoint {key!r} not found; list yours with GET /v1/endpoints", code="endpoint_not_found")


def _sees(principal: Principal, ep: Endpoint) -> bool:
    """An owner sees their own endpoints, an admin every one; another's answers as not found."""
    return ep.owner == principal.owner or principal.is_admin


class Services:
    def __init__(
        self, store: Store, settings: Settings, clock: Clock,
        nodes: Callable[[], Sequence[Node]], wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.nodes = nodes
        self.wake = wake
        self.billing = Billing(store, clock)
        self.started_at = clock.now()  # the catalog's objects are as old as the server's settings
        self.key_revoked: Callable[[str], None] | None = None

    @property
    def catalog(self) -> Catalog:
        return self.settings.catalog

    # capacity ------------------------------------------------------------------

    def node_views_now(self) -> list[NodeView]:
        return node_views(self.nodes(), self.store.live_replicas())

    def engine_for(self, spec: ModelSpec, hw: Hardware) -> str | None:
        return engine_for(self.catalog, spec, hw, self.nodes())

    def availability(self, hw: Hardware, views: list[NodeView] | None = None) -> str:
        decision = place(views if views is not None else self.node_views_now(), hw.gpu_type, hw.gpu_count)
        if not isinstance(decision, NoPlacement):
            return AVAILABLE
        return INSUFFICIENT if decision.exists else UNAVAILABLE

    def pool_capacity(self, hw: Hardware) -> int:
        """How many replicas of ``hw`` this installation could hold if it were empty."""
        return sum(n.slots // hw.gpu_count for n in self.nodes() if n.gpu_type == hw.gpu_type)

    def hardware(self, model: str | None) -> list[HardwareOffer]:
        shapes = sorted(self.catalog.hardware.values(), key=lambda h: (h.gpu_type, h.gpu_count))
        if model is None:
            return [HardwareOffer(h, None) for h in shapes]
        spec = self.catalog.get_model(model)
        views = self.node_views_now()
        return [HardwareOffer(h, self.availability(h, views)) for h in shapes
                if fits(spec, h) and self.engine_for(spec, h) is not None]

    # endpoints -----------------------------------------------------------------

    def _check_deployable(self, spec: ModelSpec, hw: Hardware) -> str:
        engine = self.engine_for(spec, hw)
        if engine is None:
            if hw.engine not in spec.engines:
                why = (f"hardware {hw.id} runs the {hw.engine} engine, and {spec.name} runs on "
                       f"{', '.join(spec.engines)}")
            else:
                why = f"it needs the {hw.engine} engine, which this installation has not configured"
            # A hardware choice problem: the words "invalid hardware provided" make Together's CLI
            # say so and list the hardware that works, instead of calling the model unavailable.
            raise InvalidRequest(
                f"invalid hardware provided: model {spec.name!r} is not supported on hardware {hw.id} "
                f"here: {why}; see which hardware works with GET /v1/hardware?model={spec.name}",
                param="hardware",
            )
        if not fits(spec, hw):
            raise InvalidRequest(
                f"the selected configuration does not fit: {spec.name} needs about "
                f"{memory_needed_bytes(spec) / GB:.1f} GB but {hw.id} offers "
                f"{usable_bytes(hw) / GB:.1f} GB usable; choose larger hardware from "
                f"GET /v1/hardware?model={spec.name}",
                param="hardware",
            )
        if model_dir(self.settings.models_dir, spec) is None and registry.engine(engine).needs_local_weights:
            raise InvalidRequest(
                f"model {spec.name!r} is not supported here: the {engine} engine needs local "
                "weights; an operator must give the model a 'source' directory in the config",
                param="model",
            )
        return engine

    def _check_hardware(self, spec: ModelSpec, hw: Hardware, min_replicas: int) -> None:
        """Refuse, in this order: a shape the model can never run on (its engine, its memory: the user's
        choice is wrong, ``invalid hardware provided``); a shape no node here has (``hardware_unavailable``,
        also where its engine is not configured either); an engine missing beside a node; a minimum the
        installation could never hold."""
        if self.pool_capacity(hw) == 0 and hw.engine in spec.engines and fits(spec, hw):
            self._check_capacity(spec, hw, min_replicas)
        self._check_deployable(spec, hw)
        self._check_capacity(spec, hw, min_replicas)

    def _check_capacity(self, spec: ModelSpec, hw: Hardware, min_replicas: int) -> None:
        """Refuse what this installation could never hold, even empty; a busy pool only queues.

        A scale-to-zero endpoint (``min_replicas`` 0) needs room for the one replica its
        first request starts.
        """
        capacity = self.pool_capacity(hw)
        if capacity >= max(min_replicas, 1):
            return
        views = self.node_views_now()
        others = [h.id for h in self.catalog.hardware.values()
                  if h.id != hw.id and fits(spec, h) and self.engine_for(spec, h)
                  and self.availability(h, views) == AVAILABLE]
        hints = []
        if capacity > 0:
            hints.append(f"min_replicas of {capacity} or less on {hw.id}")
        if others:
            hints.append(f"{spec.name} on {', '.join(sorted(others))}")
        comparable = sorted(
            m.name for m in self.catalog.models.values()
            if m.name != spec.name and (m.family == spec.family or m.size_class == spec.size_class)
            and any(fits(m, h) and self.engine_for(m, h) and self.availability(h, views) == AVAILABLE
                    for h in self.catalog.hardware.values()))
        if comparable:
            hints.append(f"comparable models that fit available hardware: {', '.join(comparable)}")
        if self.engine_for(spec, hw) is None:
            hints.append(f"{hw.id} would also need the {hw.engine} engine, which this installation has not "
                         "configured")
        raise HardwareUnavailable(
            "Hardware for endpoint not available now. please try again later. "
            f"This installation can hold {capacity} replica(s) of {hw.id}"
            + (f"; what would work now: {'; '.join(hints)}" if hints else ""),
            param="hardware",
        )

    def _committed_gpus(self, owner: str, excluding: str | None = None) -> int:
        """GPUs an owner's running endpoints are promised: their minimums."""
        total = 0
        for e in self.store.list_endpoints(owner):
            hw = self.catalog.hardware.get(e.hardware)
            if e.id != excluding and e.intent is Intent.RUN and hw is not None and not hw.is_cpu:
                total += e.min_replicas * hw.gpu_count
        return total

    def _check_quota(self, owner: str, hw: Hardware, min_replicas: int, excluding: str | None = None) -> None:
        if hw.is_cpu:
            return
        cap = self.store.owner_quota(owner)
        if cap is None:
            return
        committed = self._committed_gpus(owner, excluding)
        wanted = min_replicas * hw.gpu_count
        if committed + wanted > cap:
            raise QuotaExceeded(
                f"quota exceeded: owner {owner} has {committed} GPU(s) committed of a quota of {cap}, and "
                f"this asks for {wanted} more ({min_replicas} x {hw.id}); stop another endpoint, lower "
                "min_replicas, or ask an admin to raise the quota", param="autoscaling.min_replicas")

    def quota(self, principal: Principal, owner: str) -> OwnerQuota:
        if owner != principal.owner and not principal.is_admin:
            raise NotFound(f"owner {owner!r} not found")
        in_use = 0
        shapes = {e.id: self.catalog.hardware.get(e.hardware) for e in self.store.list_endpoints(owner)}
        for r in self.store.live_replicas():
            hw = shapes.get(r.endpoint_id)
            if hw is not None and not hw.is_cpu and r.facts.stop_requested_at is None:
                in_use += hw.gpu_count
        return OwnerQuota(owner, self.store.owner_quota(owner), self._committed_gpus(owner), in_use)

    def set_quota(self, principal: Principal, owner: str, req: QuotaUpdate) -> OwnerQuota:
        if not principal.is_admin:
            raise Forbidden("only an admin can set quotas")
        validate_owner(owner)
        self.store.set_quota(owner, req.gpus, self.clock.now())
        return self.quota(principal, owner)

    def create(self, principal: Principal, req: CreateEndpoint, *, dry_run: bool,
               availability_zone: str | None = None, into: Joining | None = None) -> EndpointView:
        """``req`` is checked as a body; what needs the installation is checked here, in the documented order.

        Without ``into`` (v1) the endpoint gets a route of its own name, as its one deployment
        (``default``); with it (v2) it is the named deployment of that route, and its own name is
        ``<route name>/<deployment name>``.
        """
        spec = self.catalog.get_model(req.model)
        models = self.catalog.models
        owner = principal.owner if into is None else into.route.owner
        if isinstance(models, ModelBook) and models.is_registered(spec.name) and \
                spec.name.partition("/")[0] != owner and not principal.is_admin:
            raise model_unknown(spec.name)  # another owner's fine-tune is not theirs to deploy
        hw = self.catalog.get_hardware(req.hardware)
        bounds = req.autoscaling
        zone = req.availability_zone or availability_zone
        if zone is not None and zone not in self.availability_zones():
            raise InvalidRequest(
                f"availability_zone {zone!r} does not exist here; choose one of "
                f"{', '.join(self.availability_zones())} or leave it out", param="availability_zone")
        self._check_hardware(spec, hw, bounds.min_replicas)
        run = req.state != "STOPPED"
        if run:
            self._check_quota(principal.owner, hw, bounds.min_replicas)

        now = self.clock.now()
        name = new_endpoint_name(owner, spec.name) if into is None else f"{into.route.name}/{into.name}"
        ep_id = new_endpoint_id()
        route = None if into is not None else Route(
            id=route_id_for(ep_id), owner=owner, name=name, visibility=Visibility.PRIVATE,
            split=(SplitEntry(ep_id, 1.0),), version=1, created_at=now, updated_at=now)
        ep = Endpoint(
            id=ep_id, name=name, owner=owner, model=spec.name, hardware=hw.id,
            display_name=req.display_name or name, min_replicas=bounds.min_replicas,
            max_replicas=bounds.max_replicas, desired_replicas=bounds.min_replicas,
            inactive_timeout=req.inactive_timeout, disable_prompt_cache=req.disable_prompt_cache,
            disable_speculative_decoding=req.disable_speculative_decoding,
            availability_zone=zone, cents_per_minute=hw.cents_per_minute,
            intent=Intent.RUN if run else Intent.STOP,
            state=EndpointState.PENDING if run else EndpointState.STOPPED,
            state_changed_at=now, status_message="waiting for placement" if run else "stopped",
            failures_before_ready=0, created_at=now, updated_at=now, deleted_at=None, version=1,
            min_queued_at=now if run else None, target_concurrency=bounds.target_concurrency,
            route_id=into.route.id if into is not None else route_id_for(ep_id),
            deployment_name=into.name if into is not None else DEFAULT_DEPLOYMENT,
            scaling_rules=into.scaling_rules if into is not None else None,
            max_concurrency=into.max_concurrency if into is not None else None,
        )
        prediction = predict(hw.cents_per_minute, bounds.min_replicas, bounds.max_replicas)
        view = EndpointView(ep, [], prediction, target=target_for(self.settings, self.nodes(), ep))
        if dry_run:
            return view
        self.store.insert_endpoint(ep, ("created", f"created {ep.name} on {hw.id}, "
                                                   f"{bounds.min_replicas}..{bounds.max_replicas} replicas"),
                                   new_route=route)
        self.wake()
        return view

    def _visible(self, principal: Principal, key: str) -> Endpoint:
        ep = self.store.get_endpoint(key)
        if ep is None or not _sees(principal, ep):
            raise not_found(key)
        return ep

    def view(self, ep: Endpoint, detail: EndpointDetail | None = None) -> EndpointView:
        """What GET shows of ``ep``: from ``detail`` where the caller read it already."""
        replicas = self.store.live_replicas(ep.id) if detail is None else detail.replicas
        ready = sum(1 for r in replicas if r.status is ReplicaStatus.READY)
        cost = self.billing.endpoint_cost(ep, ready, None if detail is None else detail.billed)
        return EndpointView(ep, replicas, predict(ep.cents_per_minute, ep.min_replicas, ep.max_replicas),
                            cost, target=target_for(self.settings, self.nodes(), ep),
                            last_scaling=PolicyState.from_json(ep.autoscale_state).last)

    def views(self, eps: Sequence[Endpoint]) -> list[EndpointView]:
        """``view`` of many endpoints from two reads, whatever their number: the live replicas, and the
        billed time of these endpoints' intervals this month."""
        if not eps:
            return []
        lo, now = self.billing.month_so_far()
        replicas: dict[str, list[Replica]] = {ep.id: [] for ep in eps}
        for r in self.store.live_replicas():  # every live one, through the row cache: cheaper than a read each
            if r.endpoint_id in replicas:
                replicas[r.endpoint_id].append(r)
        billed: dict[str, list[Billed]] = {ep.id: [] for ep in eps}
        for b in self.store.billed(lo, now, endpoint_ids=list(billed)):
            billed[b.endpoint_id].append(b)
        return [self.view(ep, EndpointDetail(ep, replicas[ep.id], billed[ep.id])) for ep in eps]

    def get(self, principal: Principal, key: str) -> EndpointView:
        """One transaction for the endpoint, its replicas and this month's intervals."""
        lo, now = self.billing.month_so_far()
        detail = self.store.endpoint_detail(key, start=lo, end=now)
        if detail is None or not _sees(principal, detail.endpoint):
            raise not_found(key)
        return self.view(detail.endpoint, detail)

    def list_endpoints(self, principal: Principal, *, mine: bool, limit: int = DEFAULT_PAGE,
                       after: str | None = None) -> EndpointPage:
        """A page of the endpoints the caller sees, oldest first, continuing after the endpoint ``after``."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_PAGE}", param="limit")
        owner = None if (principal.is_admin and not mine) else principal.owner
        found = self.store.endpoints_after(owner, after, limit + 1)
        if found is None:  # an unknown id, or another owner's: the same answer
            raise InvalidRequest(f"after {after!r} is not an endpoint of this listing; pass the next_cursor "
                                 "of the previous page", param="after")
        return EndpointPage(found[:limit], has_more=len(found) > limit)

    def update(self, principal: Principal, key: str, patch: EndpointPatch) -> EndpointView:
        """Change only what ``patch`` gives; all of it or nothing."""
        auto = patch.autoscaling
        for _ in range(5):  # retry on a concurrent change: the guarded write says who won
            ep = self._visible(principal, key)
            changes: dict[str, Any] = {}
            events = []
            if patch.given("hardware") and patch.hardware != ep.hardware:
                raise hardware_unchangeable()
            if auto is not None and "target_concurrency" in auto.model_fields_set:
                target = auto.target_concurrency
                if target != ep.target_concurrency:
                    changes["target_concurrency"] = target
                    events.append(f"target concurrency set to {target:g} per replica" if target is not None
                                  else "target concurrency reset to the default of the hardware and model")
            new_min, new_max = ep.min_replicas, ep.max_replicas
            hw = self.catalog.hardware.get(ep.hardware)
            if auto is not None and auto.bounds_given:
                bounds = validate_autoscaling(
                    ep.min_replicas if auto.min_replicas is None else auto.min_replicas,
                    ep.max_replicas if auto.max_replicas is None else auto.max_replicas)
                new_min, new_max = bounds.min_replicas, bounds.max_replicas
                if hw is not None:
                    self._check_capacity(self.catalog.get_model(ep.model), hw, new_min)
                changes.update(min_replicas=new_min, max_replicas=new_max)
                if new_min > ep.min_replicas:
                    changes["min_queued_at"] = self.clock.now()  # the extra minimum joins the queue's back
                events.append(f"autoscaling set to {new_min}..{new_max}")
            if patch.given("inactive_timeout"):
                changes["inactive_timeout"] = patch.inactive_timeout
            if patch.given("display_name"):
                changes["display_name"] = patch.display_name or ep.name
            if patch.state is not None:
                changes.update(self._state_change(ep, patch.state, events, new_min))
            # The quota is checked against what the endpoint will be: its new minimum, if it will run.
            runs = changes.get("intent", ep.intent) is Intent.RUN
            if runs and hw is not None and ({"min_replicas", "intent"} & set(changes)):
                self._check_quota(ep.owner, hw, new_min, excluding=ep.id)
            if {"min_replicas", "max_replicas", "desired_replicas"} & set(changes):
                desired = changes.get("desired_replicas", ep.desired_replicas)
                changes["desired_replicas"] = min(max(desired, new_min), new_max)
            now = self.clock.now()
            event = ("updated", "; ".join(events)) if events else None
            if not changes or self._write(ep, now, event, changes):
                self.wake()
                return self.get(principal, key)
        raise InvalidRequest("the endpoint changed while updating it; try again")

    def _write(self, ep: Endpoint, now: datetime, event: tuple[str, str] | None, changes: dict[str, Any]) -> bool:
        """A guarded write of ``changes``; one holding a new state goes through the state machine."""
        if "state" in changes:
            return self.store.change_state(ep, now, changes.pop("state"), event, **changes)
        return self.store.update_endpoint(ep, now, event, **changes)

    def _state_change(self, ep: Endpoint, state: RequestedState, events: list[str],
                      min_replicas: int) -> dict[str, Any]:
        now = self.clock.now()
        if state == "STOPPED":
            if ep.intent is Intent.STOP:
                return {}
            events.append("stop requested")
            target = EndpointState.STOPPING
            check_transition(ep.state, target)
            return {"intent": Intent.STOP, "state": target, "status_message": "stopping"}
        if ep.intent is Intent.RUN and ep.state is not EndpointState.ERROR:
            return {}
        events.append("start requested")
        target = EndpointState.PENDING
        check_transition(ep.state, target)
        return {"intent": Intent.RUN, "state": target, "failures_before_ready": 0, "desired_replicas": min_replicas,
                "status_message": "waiting for placement", "min_queued_at": now,
                "autoscale_state": None}  # a start begins afresh: no window held from before

    def set_desired_replicas(self, endpoint_id: str, replicas: int, *, reason: str) -> Endpoint:
        """The one interface that sets how many replicas should run, clamped to [min, max].

        The autoscaler calls it; so do manual scaling and tests. Capacity decides
        how many of them actually run (the rest are queued).
        """
        for _ in range(5):
            ep = self.store.get_endpoint(endpoint_id)
            if ep is None:
                raise NotFound(f"endpoint {endpoint_id!r} not found", code="endpoint_not_found")
            target = ep.within_bounds(replicas)
            if target == ep.desired_replicas:
                return ep
            event = ("scaled", f"desired replicas {ep.desired_replicas} → {target}: {reason}")
            if self.store.update_endpoint(ep, self.clock.now(), event, desired_replicas=target):
                self.wake()
                fresh = self.store.get_endpoint(endpoint_id)
                if fresh is None:
                    raise NotFound(f"endpoint {endpoint_id!r} was deleted", code="endpoint_not_found")
                return fresh
        raise InvalidRequest("the endpoint changed while scaling it; try again")

    def scale(self, principal: Principal, key: str, req: Scale) -> EndpointView:
        ep = self._visible(principal, key)
        self.set_desired_replicas(ep.id, req.replicas, reason=f"set by {principal.owner}")
        return self.get(principal, key)

    def delete(self, principal: Principal, key: str, *, keep_route: bool = False) -> None:
        """Deletes the endpoint and takes it out of its route's split; a route left without deployments
        goes too, unless ``keep_route`` (v2 deletes a deployment, and its endpoint stays)."""
        for _ in range(5):
            ep = self._visible(principal, key)
            now = self.clock.now()
            # A deleted endpoint stops like any other; the reconciler settles it to STOPPED.
            state = EndpointState.STOPPED if ep.state is EndpointState.STOPPED else EndpointState.STOPPING
            if self.store.change_state(ep, now, state, ("deleted", "endpoint deleted"),
                                       deleted_at=now, intent=Intent.STOP):
                if ep.route_id is not None:
                    self.store.leave_route(ep.id, ep.route_id, now, retire_if_empty=not keep_route)
                self.wake()
                return
        raise InvalidRequest("the endpoint changed while deleting it; try again")

    def replicas(self, principal: Principal, key: str, *, include_stopped: bool = False) -> list[Replica]:
        ep = self._visible(principal, key)
        return self.store.replicas_of(ep.id) if include_stopped else self.store.live_replicas(ep.id)

    def events(self, principal: Principal, key: str) -> list[Event]:
        return list(self.store.events(self._visible(principal, key).id))

    def nodes_view(self, principal: Principal) -> list[NodeReport]:
        if not principal.is_admin:
            raise Forbidden("the node view is for admins")
        live = self.store.live_replicas()
        names = {e.id: e.name for e in self.store.list_endpoints(None, include_deleted=True)}
        return [NodeReport(n.name, n.gpu_type, n.slots, n.declared, n.engine,
                           [SlotHolder(r.id, names.get(r.endpoint_id, r.endpoint_id), r.slots, r.status)
                            for r in live if r.node == n.name], n.region)
                for n in self.nodes()]

    def queue_view(self, principal: Principal) -> list[QueueEntry]:
        if not principal.is_admin:
            raise Forbidden("the queue view is for admins")
        out = []
        for e in self.store.list_endpoints(None):
            if e.queued_replicas <= 0 and e.queue_position is None:
                continue
            hw = self.catalog.hardware.get(e.hardware)
            out.append(QueueEntry(hw.gpu_type if hw else e.hardware, e.queue_position, e, e.queued_replicas,
                                  e.min_queued_at))
        out.sort(key=lambda q: (q.pool, q.position is None, q.position or 0, q.endpoint.name))
        return out

    def availability_zones(self) -> list[str]:
        """The configured zones, then any other region a node of the runtime says it is in."""
        zones = list(self.settings.availability_zones)
        zones.extend(sorted({n.region for n in self.nodes() if n.region and n.region not in zones}))
        return zones

    def node_views_by_zone(self) -> dict[str, list[NodeView]]:
        """The nodes now, by zone: a node of no region counts in the first configured zone."""
        zones = self.availability_zones()
        views = {v.name: v for v in self.node_views_now()}
        out: dict[str, list[NodeView]] = {z: [] for z in zones}
        for n in self.nodes():
            out[n.region or zones[0]].append(views[n.name])
        return out

    # keys ------------------------------------------------------------------------

    def create_key(self, principal: Principal, req: NewKey) -> tuple[ApiKey, str]:
        owner = req.owner or principal.owner
        if owner != principal.owner and not principal.is_admin:
            raise Forbidden("only an admin can create keys for another owner")
        if req.admin and not principal.is_admin:
            raise Forbidden("only an admin can create admin keys")
        if req.admin and req.scope != "manage":
            raise InvalidRequest("an admin key manages: leave scope out, or create a key that is not an admin's",
                                 param="scope")
        return self.store.create_key(owner, is_admin=req.admin, name=req.name, now=self.clock.now(),
                                     scope=req.scope)

    def list_keys(self, principal: Principal, *, all_owners: bool = False) -> list[ApiKey]:
        return self.store.list_keys(None if (principal.is_admin and all_owners) else principal.owner)

    def revoke_key(self, principal: Principal, key_id: str) -> ApiKey:
        key = self.store.get_key(key_id)
        if key is None or (key.owner != principal.owner and not principal.is_admin):
            raise NotFound(f"key {key_id!r} not found; list yours with GET /v1/keys")
        self.store.revoke_key(key_id, self.clock.now())
        if self.key_revoked is not None:
            self.key_revoked(key_id)  # e.g. the gateway's key cache forgets it at once
        return replace(key, revoked_at=self.clock.now())
