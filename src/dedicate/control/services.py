"""Use cases behind the faces: thin routers call these with keyword arguments.

Every accepted change is durable (committed) before the method returns; the
reconciler is then woken to act on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dedicate.clock import Clock
from dedicate.control.auth import Principal
from dedicate.control.models import model_dir
from dedicate.domain.capacity import GB, fits, memory_needed_bytes, usable_bytes
from dedicate.domain.catalog import Catalog
from dedicate.domain.endpoints import (
    EndpointState,
    Intent,
    check_transition,
    new_endpoint_id,
    new_endpoint_name,
    validate_autoscaling,
    validate_display_name,
    validate_inactive_timeout,
    validate_owner,
)
from dedicate.domain.errors import (
    Forbidden,
    HardwareUnavailable,
    InvalidRequest,
    NotFound,
)
from dedicate.domain.hardware import Hardware
from dedicate.domain.models import ModelSpec
from dedicate.domain.records import ApiKey, Endpoint, Event, Replica
from dedicate.domain.replicas import ReplicaStatus
from dedicate.metering.rating import PricePrediction, predict
from dedicate.runtimes.base import Node
from dedicate.scheduler.placement import NodeView, NoPlacement, place
from dedicate.settings import Settings
from dedicate.store.repos import Store

AVAILABLE, INSUFFICIENT, UNAVAILABLE = "available", "insufficient", "unavailable"


@dataclass(frozen=True)
class EndpointView:
    endpoint: Endpoint
    replicas: list[Replica]
    prediction: PricePrediction

    def count(self, *statuses: ReplicaStatus) -> int:
        return sum(1 for r in self.replicas if r.status in statuses)


@dataclass(frozen=True)
class HardwareOffer:
    hardware: Hardware
    availability: str | None


def _require_dict(body: object, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return body


class Services:
    def __init__(
        self, store: Store, settings: Settings, clock: Clock,
        nodes: Callable[[], list[Node]], wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.nodes = nodes
        self.wake = wake

    @property
    def catalog(self) -> Catalog:
        return self.settings.catalog

    # capacity ------------------------------------------------------------------

    def _node_views(self) -> list[NodeView]:
        used: dict[str, set[int]] = {}
        for r in self.store.live_replicas():
            if r.node is not None and r.slots:
                used.setdefault(r.node, set()).update(int(s) for s in r.slots.split(","))
        return [NodeView(n.name, n.gpu_type, n.slots,
                         tuple(s for s in range(n.slots) if s not in used.get(n.name, set())))
                for n in self.nodes()]

    def availability(self, hw: Hardware, views: list[NodeView] | None = None) -> str:
        decision = place(views if views is not None else self._node_views(), hw.gpu_type, hw.gpu_count)
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
        views = self._node_views()
        return [HardwareOffer(h, self.availability(h, views)) for h in shapes
                if fits(spec, h) and self.catalog.engine_for(spec, h) is not None]

    # endpoints -----------------------------------------------------------------

    def _check_deployable(self, spec: ModelSpec, hw: Hardware) -> str:
        engine = self.catalog.engine_for(spec, hw)
        if engine is None:
            if hw.engine not in spec.engines:
                why = (f"hardware {hw.id} runs the {hw.engine} engine, and {spec.name} runs on "
                       f"{', '.join(spec.engines)}")
            else:
                why = f"it needs the {hw.engine} engine, which this installation has not configured"
            raise InvalidRequest(
                f"model {spec.name!r} is not supported on hardware {hw.id} here: {why}; "
                f"see which hardware works with GET /v1/hardware?model={spec.name}",
                param="model",
            )
        if not fits(spec, hw):
            raise InvalidRequest(
                f"the selected configuration does not fit: {spec.name} needs about "
                f"{memory_needed_bytes(spec) / GB:.1f} GB but {hw.id} offers "
                f"{usable_bytes(hw) / GB:.1f} GB usable; choose larger hardware from "
                f"GET /v1/hardware?model={spec.name}",
                param="hardware",
            )
        if model_dir(self.settings.models_dir, spec) is None and engine == "transformers":
            raise InvalidRequest(
                f"model {spec.name!r} is not supported here: the transformers engine needs local "
                "weights; an operator must give the model a 'source' directory in the config",
                param="model",
            )
        return engine

    def _check_capacity(self, spec: ModelSpec, hw: Hardware, min_replicas: int) -> None:
        capacity = self.pool_capacity(hw)
        if capacity >= min_replicas:
            return
        views = self._node_views()
        others = [h.id for h in self.catalog.hardware.values()
                  if h.id != hw.id and fits(spec, h) and self.catalog.engine_for(spec, h)
                  and self.availability(h, views) == AVAILABLE]
        hints = []
        if capacity > 0:
            hints.append(f"min_replicas of {capacity} or less on {hw.id}")
        if others:
            hints.append(f"{spec.name} on {', '.join(sorted(others))}")
        raise HardwareUnavailable(
            "Hardware for endpoint not available now. please try again later. "
            f"This installation can hold {capacity} replica(s) of {hw.id}"
            + (f"; what would work now: {'; '.join(hints)}" if hints else ""),
            param="hardware",
        )

    def create(self, principal: Principal, body: object, *, dry_run: bool,
               availability_zone: str | None = None) -> EndpointView:
        b = _require_dict(body, "the request body")
        spec = self.catalog.get_model(b.get("model") if isinstance(b.get("model"), str) else None)
        hw_id = b.get("hardware")
        hw = self.catalog.get_hardware(hw_id if isinstance(hw_id, str) else None)
        auto = b.get("autoscaling")
        if not isinstance(auto, dict):
            raise InvalidRequest(
                "autoscaling is required: pass {\"min_replicas\": N, \"max_replicas\": M}",
                param="autoscaling")
        bounds = validate_autoscaling(auto.get("min_replicas"), auto.get("max_replicas"))
        timeout = validate_inactive_timeout(b.get("inactive_timeout"))
        display = validate_display_name(b.get("display_name"))
        state = b.get("state", "STARTED")
        if state not in ("STARTED", "STOPPED", None):
            raise InvalidRequest("state at creation must be STARTED (default) or STOPPED", param="state")
        for flag in ("disable_prompt_cache", "disable_speculative_decoding"):
            if b.get(flag) is not None and not isinstance(b.get(flag), bool):
                raise InvalidRequest(f"{flag} must be true or false", param=flag)
        zone = b.get("availability_zone") or availability_zone
        if zone is not None and zone not in self.availability_zones():
            raise InvalidRequest(
                f"availability_zone {zone!r} does not exist here; choose one of "
                f"{', '.join(self.availability_zones())} or leave it out", param="availability_zone")
        self._check_deployable(spec, hw)
        self._check_capacity(spec, hw, bounds.min_replicas)

        now = self.clock.now()
        run = state != "STOPPED"
        name = new_endpoint_name(principal.owner, spec.name)
        ep = Endpoint(
            id=new_endpoint_id(), name=name, owner=principal.owner, model=spec.name, hardware=hw.id,
            display_name=display or name, min_replicas=bounds.min_replicas,
            max_replicas=bounds.max_replicas, desired_replicas=bounds.min_replicas,
            inactive_timeout=timeout, disable_prompt_cache=bool(b.get("disable_prompt_cache")),
            disable_speculative_decoding=bool(b.get("disable_speculative_decoding")),
            availability_zone=zone, cents_per_minute=hw.cents_per_minute,
            intent=Intent.RUN if run else Intent.STOP,
            state=EndpointState.PENDING if run else EndpointState.STOPPED,
            state_changed_at=now, status_message="waiting for placement" if run else "stopped",
            failures_before_ready=0, created_at=now, updated_at=now, deleted_at=None, version=1,
        )
        prediction = predict(hw.cents_per_minute, bounds.min_replicas, bounds.max_replicas)
        if dry_run:
            return EndpointView(ep, [], prediction)
        self.store.insert_endpoint(ep, ("created", f"created {ep.name} on {hw.id}, "
                                                   f"{bounds.min_replicas}..{bounds.max_replicas} replicas"))
        self.wake()
        return EndpointView(ep, [], prediction)

    def _visible(self, principal: Principal, key: str) -> Endpoint:
        ep = self.store.get_endpoint(key)
        if ep is None or (ep.owner != principal.owner and not principal.is_admin):
            raise NotFound(f"endpoint {key!r} not found; list yours with GET /v1/endpoints",
                           code="endpoint_not_found")
        return ep

    def view(self, ep: Endpoint) -> EndpointView:
        return EndpointView(ep, self.store.live_replicas(ep.id),
                            predict(ep.cents_per_minute, ep.min_replicas, ep.max_replicas))

    def get(self, principal: Principal, key: str) -> EndpointView:
        return self.view(self._visible(principal, key))

    def list_endpoints(self, principal: Principal, *, mine: bool) -> list[Endpoint]:
        owner = None if (principal.is_admin and not mine) else principal.owner
        return self.store.list_endpoints(owner)

    def update(self, principal: Principal, key: str, body: object) -> EndpointView:
        b = _require_dict(body, "the request body")
        known = {"autoscaling", "state", "display_name", "inactive_timeout", "hardware"}
        unknown = sorted(set(b) - known)
        if unknown:
            raise InvalidRequest(f"cannot update {', '.join(unknown)}; updatable fields are "
                                 f"{', '.join(sorted(known - {'hardware'}))}", param=unknown[0])
        for _ in range(5):  # retry on a concurrent change: the guarded write says who won
            ep = self._visible(principal, key)
            changes: dict[str, Any] = {}
            events = []
            if "hardware" in b and b["hardware"] != ep.hardware:
                raise InvalidRequest(
                    "the hardware of an endpoint cannot be changed; create a new endpoint on the "
                    "new hardware, then delete this one", param="hardware")
            if "autoscaling" in b:
                auto = b["autoscaling"]
                if not isinstance(auto, dict):
                    raise InvalidRequest("autoscaling must be an object with min_replicas and/or "
                                         "max_replicas", param="autoscaling")
                bounds = validate_autoscaling(auto.get("min_replicas", ep.min_replicas),
                                              auto.get("max_replicas", ep.max_replicas))
                hw = self.catalog.hardware.get(ep.hardware)
                if hw is not None:
                    self._check_capacity(self.catalog.get_model(ep.model), hw, bounds.min_replicas)
                changes.update(min_replicas=bounds.min_replicas, max_replicas=bounds.max_replicas,
                               desired_replicas=min(max(ep.desired_replicas, bounds.min_replicas),
                                                    bounds.max_replicas))
                events.append(f"autoscaling set to {bounds.min_replicas}..{bounds.max_replicas}")
            if "inactive_timeout" in b:
                changes["inactive_timeout"] = validate_inactive_timeout(b["inactive_timeout"])
            if "display_name" in b:
                changes["display_name"] = validate_display_name(b["display_name"]) or ep.name
            if "state" in b:
                changes.update(self._state_change(ep, b["state"], events))
            now = self.clock.now()
            event = ("updated", "; ".join(events)) if events else None
            if not changes or self.store.update_endpoint(ep, now, event, **changes):
                self.wake()
                return self.get(principal, key)
        raise InvalidRequest("the endpoint changed while updating it; try again")

    def _state_change(self, ep: Endpoint, state: object, events: list[str]) -> dict[str, Any]:
        now = self.clock.now()
        if state == "STOPPED":
            if ep.intent is Intent.STOP:
                return {}
            events.append("stop requested")
            target = EndpointState.STOPPING
            check_transition(ep.state, target)
            return {"intent": Intent.STOP, "state": target, "state_changed_at": now,
                    "status_message": "stopping"}
        if state == "STARTED":
            if ep.intent is Intent.RUN and ep.state is not EndpointState.ERROR:
                return {}
            events.append("start requested")
            target = EndpointState.PENDING
            check_transition(ep.state, target)
            return {"intent": Intent.RUN, "state": target, "state_changed_at": now,
                    "failures_before_ready": 0, "desired_replicas": ep.min_replicas,
                    "status_message": "waiting for placement"}
        raise InvalidRequest("state can be set to STARTED or STOPPED", param="state")

    def delete(self, principal: Principal, key: str) -> None:
        for _ in range(5):
            ep = self._visible(principal, key)
            now = self.clock.now()
            if self.store.update_endpoint(ep, now, ("deleted", "endpoint deleted"),
                                          deleted_at=now, intent=Intent.STOP):
                self.wake()
                return
        raise InvalidRequest("the endpoint changed while deleting it; try again")

    def events(self, principal: Principal, key: str) -> list[Event]:
        return list(self.store.events(self._visible(principal, key).id))

    def availability_zones(self) -> list[str]:
        zones = self.settings.extra.get("server", {}).get("availability_zones")
        return list(zones) if zones else ["local"]

    # keys ------------------------------------------------------------------------

    def create_key(self, principal: Principal, body: object) -> tuple[ApiKey, str]:
        b = _require_dict(body if body is not None else {}, "the request body")
        owner = b.get("owner", principal.owner)
        validate_owner(owner)
        if owner != principal.owner and not principal.is_admin:
            raise Forbidden("only an admin can create keys for another owner")
        if b.get("admin") and not principal.is_admin:
            raise Forbidden("only an admin can create admin keys")
        name = b.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise InvalidRequest("name must be a string of at most 200 characters", param="name")
        return self.store.create_key(owner, is_admin=bool(b.get("admin")), name=name,
                                     now=self.clock.now())

    def list_keys(self, principal: Principal, *, all_owners: bool = False) -> list[ApiKey]:
        return self.store.list_keys(None if (principal.is_admin and all_owners) else principal.owner)

    def revoke_key(self, principal: Principal, key_id: str) -> ApiKey:
        key = self.store.get_key(key_id)
        if key is None or (key.owner != principal.owner and not principal.is_admin):
            raise NotFound(f"key {key_id!r} not found; list yours with GET /v1/keys")
        self.store.revoke_key(key_id, self.clock.now())
        return replace(key, revoked_at=self.clock.now())
