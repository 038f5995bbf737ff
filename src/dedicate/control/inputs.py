"""What callers ask the services for: typed, checked inputs, which are also the management API's bodies.

Each check is a domain ``validate_*`` function, so a bad value gets the message (and ``param``)
that Together's clients know, whoever built the input: the API from a request body, or code and
tests by keyword. The functions raise the domain's :class:`InvalidRequest`, which pydantic lets
through unchanged (it wraps only ``ValueError`` and ``AssertionError``), so a bad body reaches the
one error boundary (``api/errors.py``) exactly as a service's own refusal does, and the first
field at fault answers. A missing required field gets the same message as a wrong one.

Checks that need the installation (is the model in the catalog, does the hardware exist, is
there room) stay in the services, which run them after these.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from dedicate.domain.catalog import hardware_required, model_required
from dedicate.domain.endpoints import (
    MAX_DISPLAY_NAME,
    MAX_REPLICAS,
    MAX_TARGET_CONCURRENCY,
    OWNER_PATTERN,
    RequestedState,
    autoscaling_required,
    hardware_unchangeable,
    validate_autoscaling,
    validate_display_name,
    validate_flag,
    validate_inactive_timeout,
    validate_owner,
    validate_replica_bound,
    validate_replicas,
    validate_requested_state,
    validate_start_state,
    validate_target_concurrency,
)
from dedicate.domain.errors import InvalidRequest
from dedicate.domain.records import KEY_SCOPES, KeyScope

MAX_KEY_NAME = 200


def json_object(data: object) -> dict[str, Any]:
    """A body as a dict: raw bytes (a client that sent no JSON content type) are parsed first."""
    if isinstance(data, bytes | bytearray):
        if not data.strip():
            data = None
        else:
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


class _Part(BaseModel):
    """A nested object of a body: frozen, unknown keys ignored (newer clients may send more)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Body(_Part):
    """A whole request body: a JSON object, checked by ``check`` before its fields are."""

    OPTIONAL: ClassVar[bool] = False  # no body, or null, is an empty object

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data: object) -> object:
        if isinstance(data, cls):
            return data
        if cls.OPTIONAL and (data is None or (isinstance(data, bytes | bytearray) and not data.strip())):
            data = {}
        return cls.check(json_object(data))

    @classmethod
    def check(cls, body: dict[str, Any]) -> dict[str, Any]:
        return body


# endpoints -------------------------------------------------------------------------------------------

class AutoscalingSpec(_Part):
    """Together's bounds, and dedicate's target concurrency per replica (null: the default)."""

    min_replicas: int = Field(ge=0, description="replicas kept running; 0 scales to zero when idle")
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS, description="the most replicas the autoscaler may run")
    target_concurrency: float | None = Field(
        default=None, gt=0, le=MAX_TARGET_CONCURRENCY,
        description="requests in flight per replica the autoscaler aims at; null: the hardware and model's default")

    @model_validator(mode="before")
    @classmethod
    def _bounds(cls, data: object) -> object:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise autoscaling_required()
        bounds = validate_autoscaling(data.get("min_replicas"), data.get("max_replicas"))
        return {"min_replicas": bounds.min_replicas, "max_replicas": bounds.max_replicas,
                "target_concurrency": validate_target_concurrency(data.get("target_concurrency"))}


def _zone(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest("availability_zone must be a zone name from GET /v1/clusters/availability-zones, "
                             "or left out", param="availability_zone")
    return value


class CreateEndpoint(Body):
    """``POST /v1/endpoints``: Together's create body. Fields are checked in this order."""

    model: str = Field(description="a model of the catalog (GET /v1/catalog/models)")
    hardware: str = Field(description="a hardware id (GET /v1/hardware?model=...); \"\" answers 'hardware is required'")
    autoscaling: AutoscalingSpec
    inactive_timeout: Annotated[int | None, BeforeValidator(validate_inactive_timeout)] = Field(
        default=None, ge=0, description="minutes without traffic before the endpoint stops; 0 or null: never")
    display_name: Annotated[str | None, BeforeValidator(validate_display_name)] = Field(
        default=None, max_length=MAX_DISPLAY_NAME, description="trimmed; empty or null: the endpoint's name")
    state: Annotated[RequestedState, BeforeValidator(validate_start_state)] = Field(
        default="STARTED", description="STOPPED creates the endpoint without starting it")
    disable_prompt_cache: Annotated[bool, BeforeValidator(lambda v: validate_flag("disable_prompt_cache", v))] = False
    disable_speculative_decoding: Annotated[
        bool, BeforeValidator(lambda v: validate_flag("disable_speculative_decoding", v))] = False
    availability_zone: Annotated[str | None, BeforeValidator(_zone)] = Field(
        default=None, description="one of GET /v1/clusters/availability-zones; may also come as a query parameter")

    @classmethod
    def check(cls, body: dict[str, Any]) -> dict[str, Any]:
        # Presence first, with the words Together's CLI looks for; "" is the catalog's to refuse,
        # after the model, as the CLI sends it when the user named no hardware.
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise model_required()
        if not isinstance(body.get("hardware"), str):
            raise hardware_required()
        if not isinstance(body.get("autoscaling"), dict | AutoscalingSpec):
            raise autoscaling_required()
        return body


class AutoscalingPatch(_Part):
    """Either bound alone merges with the stored one; ``target_concurrency``: null is the default, absent keeps it."""

    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    target_concurrency: float | None = Field(default=None, gt=0, le=MAX_TARGET_CONCURRENCY)

    @model_validator(mode="before")
    @classmethod
    def _given(cls, data: object) -> object:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise InvalidRequest("autoscaling must be an object with min_replicas, max_replicas "
                                 "and/or target_concurrency", param="autoscaling")
        out: dict[str, Any] = {}
        for name in ("min_replicas", "max_replicas"):
            if name in data:
                out[name] = validate_replica_bound(name, data[name])
        if "target_concurrency" in data:
            out["target_concurrency"] = validate_target_concurrency(data["target_concurrency"])
        return out  # only what was given: ``model_fields_set`` tells the service

    @property
    def bounds_given(self) -> bool:
        return bool({"min_replicas", "max_replicas"} & self.model_fields_set)


def _same_hardware_only(value: object) -> str:
    if not isinstance(value, str):
        raise hardware_unchangeable()
    return value


class EndpointPatch(Body):
    """``PATCH /v1/endpoints/{id}``: only the fields given change (``model_fields_set``); others are refused."""

    UPDATABLE: ClassVar[tuple[str, ...]] = ("autoscaling", "display_name", "inactive_timeout", "state")

    hardware: Annotated[str | None, BeforeValidator(_same_hardware_only)] = Field(
        default=None, description="accepted only if it is the endpoint's hardware already")
    autoscaling: AutoscalingPatch | None = None
    inactive_timeout: Annotated[int | None, BeforeValidator(validate_inactive_timeout)] = Field(
        default=None, ge=0, description="minutes; 0 or null: never")
    display_name: Annotated[str | None, BeforeValidator(validate_display_name)] = Field(
        default=None, max_length=MAX_DISPLAY_NAME, description="empty or null: back to the endpoint's name")
    state: Annotated[RequestedState | None, BeforeValidator(validate_requested_state)] = Field(
        default=None, description="STARTED (also leaves ERROR) or STOPPED")

    @classmethod
    def check(cls, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - {*cls.UPDATABLE, "hardware"})
        if unknown:
            raise InvalidRequest(f"cannot update {', '.join(unknown)}; updatable fields are "
                                 f"{', '.join(cls.UPDATABLE)}", param=unknown[0])
        if "autoscaling" in body and body["autoscaling"] is None:
            AutoscalingPatch.model_validate(None)  # null is no object: refused as one
        return body

    def given(self, name: str) -> bool:
        return name in self.model_fields_set


STARTED = EndpointPatch(state="STARTED")
STOPPED = EndpointPatch(state="STOPPED")


class Scale(Body):
    """``POST /v1/endpoints/{id}/scale``."""

    replicas: Annotated[int, BeforeValidator(validate_replicas)] = Field(
        ge=0, description="the desired count, clamped to [min_replicas, max_replicas]")

    @classmethod
    def check(cls, body: dict[str, Any]) -> dict[str, Any]:
        validate_replicas(body.get("replicas"))  # missing says what a wrong one says
        return body


# owners, keys, budgets -----------------------------------------------------------------------------------

def _gpus(value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidRequest("gpus must be a whole number of GPUs, or null for no cap", param="gpus")
    return value


class QuotaUpdate(Body):
    """``PUT /v1/owners/{owner}/quota``."""

    gpus: Annotated[int | None, BeforeValidator(_gpus)] = Field(
        default=None, ge=0, description="null (or absent): no cap")


def _key_owner(value: object) -> str | None:
    return None if value is None else validate_owner(value)


def _key_name(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > MAX_KEY_NAME):
        raise InvalidRequest(f"name must be a string of at most {MAX_KEY_NAME} characters", param="name")
    return value


def _admin(value: object) -> bool:
    return validate_flag("admin", value)


def _scope(value: object) -> KeyScope:
    if value is None:
        return "manage"
    for scope in KEY_SCOPES:
        if value == scope:
            return scope
    raise InvalidRequest("scope must be one of: " + ", ".join(KEY_SCOPES) + " (inference: a key that can only "
                         "call models)", param="scope")


class NewKey(Body):
    """``POST /v1/keys``; the body is optional."""

    OPTIONAL = True

    owner: Annotated[str | None, BeforeValidator(_key_owner)] = Field(
        default=None, pattern=OWNER_PATTERN, description="default: the caller's owner; another: admins only")
    name: Annotated[str | None, BeforeValidator(_key_name)] = Field(default=None, max_length=MAX_KEY_NAME)
    admin: Annotated[bool, BeforeValidator(_admin)] = Field(default=False, description="an admin key: admins only")
    scope: Annotated[KeyScope, BeforeValidator(_scope)] = Field(
        default="manage", description="manage: every route (the default); inference: only calls to models")


def _monthly_cents(raw: object) -> Decimal | None:
    if raw is None:
        return None
    try:
        cents = Decimal(str(raw))
    except InvalidOperation as exc:
        raise InvalidRequest("monthly_cents must be a number of cents, or null for none",
                             param="monthly_cents") from exc
    if not cents.is_finite() or cents < 0:
        raise InvalidRequest("monthly_cents must be a finite, non-negative number of cents", param="monthly_cents")
    return cents


def _stop_at_limit(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest("stop_at_limit must be true or false", param="stop_at_limit")
    return value


class BudgetUpdate(Body):
    """``PUT /v1/billing/budget``."""

    monthly_cents: Annotated[Decimal | None, BeforeValidator(_monthly_cents)] = Field(
        default=None, ge=0, description="cents per calendar month (UTC), a number or a decimal string; null: none")
    stop_at_limit: Annotated[bool, BeforeValidator(_stop_at_limit)] = Field(
        default=False, description="stop the owner's endpoints once the month's charges reach the budget")
