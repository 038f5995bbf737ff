"""API objects: how domain records look on the wire (Together's flat v1 shapes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dedicate.control.services import EndpointView, HardwareOffer
from dedicate.domain.records import ApiKey, Endpoint, Event, Replica
from dedicate.domain.replicas import ReplicaStatus


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def list_endpoint(ep: Endpoint) -> dict[str, Any]:
    return {
        "object": "endpoint", "id": ep.id, "name": ep.name, "model": ep.model,
        "type": "dedicated", "owner": ep.owner, "state": ep.state.value,
        "created_at": iso(ep.created_at),
    }


def dedicated_endpoint(v: EndpointView, *, dry_run: bool = False) -> dict[str, Any]:
    ep = v.endpoint
    out = list_endpoint(ep)
    out.update({
        "display_name": ep.display_name,
        "hardware": ep.hardware,
        "autoscaling": autoscaling(ep),
        "autoscaler": autoscaler(v),
        "inactive_timeout": ep.inactive_timeout,
        "disable_prompt_cache": ep.disable_prompt_cache,
        "disable_speculative_decoding": ep.disable_speculative_decoding,
        "availability_zone": ep.availability_zone,
        "status_message": ep.status_message,
        "state_changed_at": iso(ep.state_changed_at),
        "replicas": {
            "desired": ep.desired_replicas if ep.state.value not in ("STOPPED", "STOPPING") else 0,
            "ready": v.count(ReplicaStatus.READY),
            "starting": v.count(ReplicaStatus.STARTING, ReplicaStatus.PLACED),
            "queued": ep.queued_replicas,
            "stopping": v.count(ReplicaStatus.STOPPING),
        },
        "queue_position": ep.queue_position,
        "pricing": v.prediction.as_dict(),
    })
    if v.cost is not None:
        out["billing"] = v.cost
    if dry_run:
        out["dry_run"] = True
    return out


def autoscaling(ep: Endpoint) -> dict[str, Any]:
    """Together's {min_replicas, max_replicas}, and the target concurrency only where the user set one."""
    out: dict[str, Any] = {"min_replicas": ep.min_replicas, "max_replicas": ep.max_replicas}
    if ep.target_concurrency is not None:
        out["target_concurrency"] = ep.target_concurrency
    return out


def autoscaler(v: EndpointView) -> dict[str, Any]:
    """What the autoscaler aims at and its last decision, with the reason it gave."""
    last = v.last_scaling
    return {
        "target_concurrency": v.target.as_dict() if v.target else None,
        "last_decision": None if last is None else {
            "at": iso(datetime.fromtimestamp(last.at, UTC)), "from": last.before, "to": last.after,
            "reason": last.why},
    }


def hardware(offer: HardwareOffer, updated_at: datetime) -> dict[str, Any]:
    h = offer.hardware
    out: dict[str, Any] = {
        "object": "hardware",
        "id": h.id,
        "pricing": {"cents_per_minute": float(h.cents_per_minute)},
        "specs": {"gpu_type": h.gpu_type, "gpu_link": h.gpu_link,
                  "gpu_memory": h.gpu_memory_gb, "gpu_count": h.gpu_count},
        "updated_at": iso(updated_at),
    }
    if offer.availability is not None:
        out["availability"] = {"status": offer.availability}
    return out


def api_key(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "object": "api_key", "id": key.id, "owner": key.owner, "prefix": key.prefix,
        "name": key.name, "admin": key.is_admin, "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at),
    }
    if secret is not None:
        out["key"] = secret
    return out


def replica(r: Replica) -> dict[str, Any]:
    f = r.facts
    return {
        "object": "replica", "id": r.id, "status": r.status.value, "engine": r.engine, "node": r.node,
        "slots": list(r.slots), "placed_at": iso(f.placed_at),
        "launched_at": iso(f.launched_at), "first_ready_at": iso(f.first_ready_at),
        "last_probe_ok_at": iso(f.last_probe_ok_at), "stop_requested_at": iso(f.stop_requested_at),
        "stop_reason": r.stop_reason, "stopped_at": iso(f.stopped_at), "exit_code": f.exit_code,
    }


def event(e: Event) -> dict[str, Any]:
    return {"object": "event", "id": e.id, "at": iso(e.at), "kind": e.kind, "message": e.message}
