"""Routes: the stable, inference-addressable names that v2 calls endpoints, over deployments.

A *route* is a name (``<owner>/<name>``) with a visibility and a traffic split; the deployments
it holds are dedicate's endpoint records (``records.Endpoint``: a model on a shape, its replicas,
its bill), which v1 calls endpoints because there a name held exactly one. So a v1 endpoint is
a route with one deployment of the same name, and both APIs show the same rows.

Ids at the v2 edge are prefixed: a route is ``ep_…``; a deployment is ``dep_<uuid>`` for the
record ``endpoint-<uuid>``, so the two ids of one deployment map onto each other without a
column. A route made for a v1 endpoint takes that endpoint's uuid as well.

The split names deployments by record id with a weight; a request goes to a deployment with
probability proportional to weight × ready replicas (``choice_weights``). Weight 0 keeps the
entry but takes no new requests; an empty split leaves the name unrouted.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from dedicate.domain.endpoints import EndpointState, Intent, ReplicaCounts
from dedicate.domain.errors import InvalidRequest
from dedicate.domain.records import Endpoint

ROUTE_PREFIX = "ep_"
DEPLOYMENT_PREFIX = "dep_"
RECORD_PREFIX = "endpoint-"
MAX_SPLIT = 32

# Bare names as users give them. Deployment names allow uppercase and dots: the CLI makes them
# from model names (``Qwen-Qwen2.5-7B-0e82dc4d``).
_ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Visibility(enum.StrEnum):
    PRIVATE = "VISIBILITY_PRIVATE"
    INTERNAL = "VISIBILITY_INTERNAL"


@dataclass(frozen=True)
class SplitEntry:
    deployment: str  # the record id (endpoint-…)
    weight: float


@dataclass(frozen=True)
class Route:
    id: str
    owner: str
    name: str  # qualified: <owner>/<bare>
    visibility: Visibility
    split: tuple[SplitEntry, ...]
    version: int  # the etag: changes with the route's own fields, never with a deployment's
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    @property
    def etag(self) -> str:
        return str(self.version)

    @property
    def bare_name(self) -> str:
        return self.name.partition("/")[2]


def new_route_id() -> str:
    return f"{ROUTE_PREFIX}{uuid.uuid4()}"


def route_id_for(record_id: str) -> str:
    """The route made for a v1 endpoint: the same uuid."""
    return f"{ROUTE_PREFIX}{record_id.removeprefix(RECORD_PREFIX)}"


def deployment_id(record_id: str) -> str:
    """The v2 id of a deployment record."""
    return f"{DEPLOYMENT_PREFIX}{record_id.removeprefix(RECORD_PREFIX)}"


def record_id(deployment: str) -> str | None:
    """The record id of a v2 deployment id, or None when it is not one."""
    if not deployment.startswith(DEPLOYMENT_PREFIX) or len(deployment) == len(DEPLOYMENT_PREFIX):
        return None
    return f"{RECORD_PREFIX}{deployment.removeprefix(DEPLOYMENT_PREFIX)}"


def qualified(owner: str, name: object, *, param: str = "name") -> str:
    """``<owner>/<name>`` from a bare name, or from a qualified one whose slug is the owner's."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{param} is required: a name such as 'chat'", param=param)
    slug, sep, bare = name.rpartition("/")
    if sep and slug != owner:
        raise InvalidRequest(f"{param} {name!r} names project {slug!r}, not this one ({owner!r}); "
                             "pass the bare name", param=param)
    if not _ROUTE_NAME.fullmatch(bare):
        raise InvalidRequest(f"{param} {bare!r} must be 1-63 characters of lowercase letters, digits, '.', '-' "
                             "or '_', starting with a letter or digit", param=param)
    return f"{owner}/{bare}"


def deployment_name(name: object, *, param: str = "name") -> str:
    """A bare deployment name; the last segment of a qualified one."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{param} is required: a deployment name such as 'blue'", param=param)
    bare = name.rpartition("/")[2]
    if not _DEPLOYMENT_NAME.fullmatch(bare):
        raise InvalidRequest(f"{param} {bare!r} must be 1-100 letters, digits, '.', '-' or '_', starting with a "
                             "letter or digit", param=param)
    return bare


def check_split(entries: Sequence[tuple[str, object]], members: Mapping[str, str]) -> tuple[SplitEntry, ...]:
    """A traffic split over ``members`` (record id → its v2 id, for messages), checked whole.

    ``entries`` are (record id or None for an unknown v2 id, weight) in the order given.
    """
    if len(entries) > MAX_SPLIT:
        raise InvalidRequest(f"trafficSplit has {len(entries)} entries; at most {MAX_SPLIT}", param="trafficSplit")
    seen: set[str] = set()
    out = []
    for i, (rec, weight) in enumerate(entries):
        where = f"trafficSplit[{i}]"
        if rec not in members:
            raise InvalidRequest(f"{where}.deploymentId is not a deployment of this endpoint; its deployments: "
                                 f"{', '.join(sorted(members.values())) or 'none'}", param=f"{where}.deploymentId")
        if rec in seen:
            raise InvalidRequest(f"{where}.deploymentId {members[rec]} is in the split twice",
                                 param=f"{where}.deploymentId")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise InvalidRequest(f"{where}.weight must be a finite number at least 0, got {weight!r}",
                                 param=f"{where}.weight")
        seen.add(rec)
        out.append(SplitEntry(rec, float(weight)))
    return tuple(out)


K = TypeVar("K")


def choice_weights(members: Sequence[tuple[K, float, int, bool]]) -> list[tuple[K, float]]:
    """What a split's new requests go by: (member, weight, ready replicas, told to run) in, each member that
    takes requests now with its weight out.

    Weight × ready replicas, over the members with a weight above 0; while none of them has a ready
    replica, their weights alone (a request waits there for one). Members told to stop count only
    when every weighted one is. The gateway chooses by these; ``traffic_shares`` shows them.
    """
    weighted = [m for m in members if m[1] > 0]
    running = [m for m in weighted if m[3]] or weighted
    ready = [(k, w * n) for k, w, n, _ in running if n > 0]
    return ready or [(k, w) for k, w, _, _ in running]


def traffic_shares(split: Sequence[SplitEntry], ready: Mapping[str, int],
                   running: Mapping[str, bool] | None = None) -> dict[str, float]:
    """The share of new requests each deployment of the split gets now (0 to 1), as ``choice_weights`` has it."""
    weights = choice_weights([(e.deployment, e.weight, ready.get(e.deployment, 0),
                               True if running is None else running.get(e.deployment, False)) for e in split])
    total = sum(w for _, w in weights)
    shares = {e.deployment: 0.0 for e in split}
    for dep, w in weights:
        shares[dep] = w / total
    return shares


class DeploymentState(enum.StrEnum):
    PROVISIONING = "DEPLOYMENT_STATE_PROVISIONING"
    READY = "DEPLOYMENT_STATE_READY"
    SCALING = "DEPLOYMENT_STATE_SCALING"
    DEGRADED = "DEPLOYMENT_STATE_DEGRADED"
    FAILED = "DEPLOYMENT_STATE_FAILED"
    STOPPING = "DEPLOYMENT_STATE_STOPPING"
    STOPPED = "DEPLOYMENT_STATE_STOPPED"


def deployment_state(ep: Endpoint, counts: ReplicaCounts) -> DeploymentState:
    """v2's state of a deployment, from the facts behind its v1 state and counts.

    ERROR is FAILED; a deployment told to stop is STOPPING until its state is STOPPED; with no
    ready replica it is PROVISIONING; below its minimum, once it had been up (v1 STARTED falls
    back to PENDING/STARTING), DEGRADED; short of its desired count, SCALING; else READY.
    """
    if ep.state is EndpointState.ERROR:
        return DeploymentState.FAILED
    if ep.intent is Intent.STOP or ep.deleted_at is not None:
        return DeploymentState.STOPPED if ep.state is EndpointState.STOPPED else DeploymentState.STOPPING
    if counts.ready == 0:
        return DeploymentState.PROVISIONING if counts.desired > 0 else DeploymentState.READY
    if counts.ready < ep.min_replicas:
        return DeploymentState.DEGRADED
    if counts.ready < counts.desired:
        return DeploymentState.SCALING
    return DeploymentState.READY


class Level(enum.StrEnum):
    DEBUG = "LEVEL_DEBUG"
    INFO = "LEVEL_INFO"
    WARN = "LEVEL_WARN"
    ERROR = "LEVEL_ERROR"


LEVELS = tuple(Level)

# dedicate's event kinds as v2 event types; what is not here is a condition that changed
_EVENT_TYPES: dict[str, tuple[str, Level]] = {
    "created": ("deployment.created", Level.INFO),
    "deleted": ("deployment.deleted", Level.INFO),
    "updated": ("deployment.updated", Level.INFO),
    "scaled": ("deployment.scaled", Level.INFO),
    "failed": ("condition.set", Level.ERROR),
    "unhealthy": ("condition.set", Level.WARN),
    "yielded": ("condition.set", Level.WARN),
}
_SCALED = re.compile(r"(\d+)\s*(?:→|->)\s*(\d+)")


def event_type(kind: str) -> tuple[str, Level]:
    """The v2 type and level of one of dedicate's event kinds."""
    return _EVENT_TYPES.get(kind, ("condition.set", Level.INFO))


def scaled_between(message: str) -> tuple[int, int] | None:
    """The replica counts of a scaling event ("desired replicas 1 → 3: ..."), when it says them."""
    m = _SCALED.search(message)
    return (int(m[1]), int(m[2])) if m else None


def deployment_etag(ep: Endpoint) -> str:
    """A deployment's etag: a digest of what its owner set (bounds, stop, idle timeout, target, rules, name).

    Not its record's version, which the reconciler and the autoscaler move all the time: an etag read
    by a client stays current until someone changes the deployment itself.
    """
    spec = (ep.min_replicas, ep.max_replicas, ep.intent.value, ep.inactive_timeout, ep.target_concurrency,
            ep.scaling_rules, ep.max_concurrency, ep.deployment_name, ep.display_name, ep.deleted_at is None)
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]
