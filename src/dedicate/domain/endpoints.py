"""Endpoint spec, validation, naming and the state machine.

The state machine is enforced here and nowhere else: a reconciler proposes
the next state with :func:`next_state` and writes it only through
:func:`check_transition`.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from typing import Literal

from dedicate.domain.errors import Conflict, InvalidRequest

MAX_REPLICAS = 64
MAX_DISPLAY_NAME = 200


class EndpointState(enum.StrEnum):
    PENDING = "PENDING"
    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


class Intent(enum.StrEnum):
    """What the user asked for: run the endpoint, or keep it stopped."""

    RUN = "run"
    STOP = "stop"


S = EndpointState
ALLOWED: dict[EndpointState, frozenset[EndpointState]] = {
    S.PENDING: frozenset({S.STARTING, S.STARTED, S.STOPPING, S.STOPPED, S.ERROR}),
    S.STARTING: frozenset({S.PENDING, S.STARTED, S.STOPPING, S.STOPPED, S.ERROR}),
    S.STARTED: frozenset({S.PENDING, S.STARTING, S.STOPPING, S.STOPPED, S.ERROR}),
    S.STOPPING: frozenset({S.STOPPED, S.PENDING, S.STARTING, S.STARTED}),
    S.STOPPED: frozenset({S.PENDING, S.STARTING}),
    S.ERROR: frozenset({S.PENDING, S.STARTING, S.STOPPING, S.STOPPED}),
}


def check_transition(current: EndpointState, new: EndpointState) -> None:
    if new != current and new not in ALLOWED[current]:
        raise Conflict(f"endpoint cannot go from {current} to {new}")


@dataclass(frozen=True)
class ReplicaCounts:
    desired: int
    ready: int
    starting: int
    queued: int
    stopping: int

    @property
    def live(self) -> int:
        """Replicas holding a process or a place: anything not yet gone."""
        return self.ready + self.starting + self.stopping


def next_state(
    current: EndpointState,
    intent: Intent,
    min_replicas: int,
    counts: ReplicaCounts,
    failed_before_ready: int,
    max_failures: int,
) -> EndpointState:
    """The state an endpoint should show, from what its replicas are doing.

    STARTED is reached once ``min_replicas`` are ready and kept while one is (or, with
    ``min_replicas`` 0, while it scales from zero: it may run with no replica at all);
    ERROR once replicas failed ``max_failures`` times in a row without ever
    becoming ready, and kept until the user starts or stops it again.
    """
    if intent is Intent.STOP:
        return S.STOPPING if counts.live > 0 else S.STOPPED
    if current is S.ERROR:
        return S.ERROR
    if failed_before_ready >= max_failures and counts.ready == 0:
        return S.ERROR
    if counts.ready >= max(min_replicas, 1):
        return S.STARTED
    if current is S.STARTED and (counts.ready >= 1 or min_replicas == 0):
        return S.STARTED  # a scale-to-zero endpoint's minimum is always met, also while it scales up
    if counts.desired == 0:
        return S.STARTED  # scaled to zero: running, costs nothing
    if counts.starting > 0 or counts.ready > 0:
        return S.STARTING
    return S.PENDING


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int


def autoscaling_required() -> InvalidRequest:
    return InvalidRequest(
        "autoscaling is required: pass {\"min_replicas\": N, \"max_replicas\": M}", param="autoscaling")


def validate_replica_bound(name: str, value: object) -> int:
    """``min_replicas`` or ``max_replicas`` is a whole number (its range is checked with the other bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"autoscaling.{name} must be a whole number, got {value!r}", param=f"autoscaling.{name}"
        )
    return value


def validate_autoscaling(min_replicas: object, max_replicas: object) -> Autoscaling:
    lo = validate_replica_bound("min_replicas", min_replicas)
    hi = validate_replica_bound("max_replicas", max_replicas)
    if lo < 0:
        raise InvalidRequest(
            f"autoscaling.min_replicas must be at least 0 (got {lo}); "
            "0 lets the endpoint scale to zero replicas when idle",
            param="autoscaling.min_replicas",
        )
    if hi < 1:
        raise InvalidRequest(
            f"autoscaling.max_replicas must be at least 1 (got {hi}); "
            "to stop an endpoint, set its state to STOPPED",
            param="autoscaling.max_replicas",
        )
    if hi > MAX_REPLICAS:
        raise InvalidRequest(
            f"autoscaling.max_replicas must be at most {MAX_REPLICAS} (got {hi})",
            param="autoscaling.max_replicas",
        )
    if lo > hi:
        raise InvalidRequest(
            f"autoscaling.min_replicas ({lo}) must not exceed max_replicas ({hi}); "
            "raise max_replicas or lower min_replicas",
            param="autoscaling",
        )
    return Autoscaling(lo, hi)


MAX_TARGET_CONCURRENCY = 4096


def validate_target_concurrency(value: object) -> float | None:
    """Requests in flight per replica the autoscaler aims at; None means the default for the hardware."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidRequest(
            f"autoscaling.target_concurrency must be a number of requests per replica, or null for "
            f"the default, got {value!r}", param="autoscaling.target_concurrency",
        )
    if not 0 < value <= MAX_TARGET_CONCURRENCY:
        raise InvalidRequest(
            f"autoscaling.target_concurrency must be above 0 and at most {MAX_TARGET_CONCURRENCY} "
            f"(got {value}); use null for the default of the hardware and model",
            param="autoscaling.target_concurrency",
        )
    return float(value)


def validate_inactive_timeout(value: object) -> int | None:
    """Minutes of idleness before auto-stop; 0 or None means never."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"inactive_timeout must be a whole number of minutes (0 or null = never), got {value!r}",
            param="inactive_timeout",
        )
    if value < 0:
        raise InvalidRequest(
            f"inactive_timeout must not be negative (got {value}); use 0 or null to never stop",
            param="inactive_timeout",
        )
    return value or None


def validate_display_name(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
    if not isinstance(value, str) or len(value) > MAX_DISPLAY_NAME:
        raise InvalidRequest(
            f"display_name must be a string of at most {MAX_DISPLAY_NAME} characters",
            param="display_name",
        )
    return value.strip() or None


RequestedState = Literal["STARTED", "STOPPED"]  # the states a user may ask for


def validate_start_state(value: object) -> RequestedState:
    """The ``state`` a create asks for: STARTED (the default, also for null) or STOPPED."""
    if value is None or value == "STARTED":
        return "STARTED"
    if value == "STOPPED":
        return "STOPPED"
    raise InvalidRequest("state at creation must be STARTED (default) or STOPPED", param="state")


def validate_requested_state(value: object) -> RequestedState:
    """The ``state`` an update asks for: STARTED or STOPPED."""
    if value == "STARTED":
        return "STARTED"
    if value == "STOPPED":
        return "STOPPED"
    raise InvalidRequest("state can be set to STARTED or STOPPED", param="state")


def validate_flag(name: str, value: object) -> bool:
    """A boolean option; null or absent is false."""
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false", param=name)
    return bool(value)


def hardware_unchangeable() -> InvalidRequest:
    return InvalidRequest(
        "the hardware of an endpoint cannot be changed; create a new endpoint on the "
        "new hardware, then delete this one", param="hardware")


def validate_replicas(value: object) -> int:
    """A desired replica count asked for by hand."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest("replicas must be a whole number; it is clamped to the endpoint's "
                             "[min_replicas, max_replicas]", param="replicas")
    return value


_SLUG = re.compile(r"[^a-z0-9]+")


def model_slug(model: str) -> str:
    return _SLUG.sub("-", model.rsplit("/", 1)[-1].lower()).strip("-")[:40] or "model"


def new_endpoint_id() -> str:
    return f"endpoint-{uuid.uuid4()}"


def new_endpoint_name(owner: str, model: str) -> str:
    return f"{owner}/{model_slug(model)}-{uuid.uuid4().hex[:8]}"


OWNER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_OWNER = re.compile(OWNER_PATTERN)


def validate_owner(owner: object) -> str:
    if not isinstance(owner, str) or not _OWNER.fullmatch(owner):
        raise InvalidRequest(
            "owner must be 1-63 characters of lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit",
            param="owner",
        )
    return owner
