"""What every route needs: the services, the caller, the parsed body."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from dedicate.control.auth import Principal, authenticate
from dedicate.control.services import Services
from dedicate.domain.errors import Forbidden, InvalidRequest

T = TypeVar("T")
MAX_BODY = 1 << 20


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def principal(request: Request) -> Principal:
    return await run_in_threadpool(authenticate, services(request).store,
                                   request.headers.get("authorization"))


async def admin(request: Request) -> Principal:
    p = await principal(request)
    if not p.is_admin:
        raise Forbidden("this needs an admin API key")
    return p


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidRequest(f"request body too large: at most {MAX_BODY} bytes")
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking service code (database) off the event loop."""
    return await run_in_threadpool(fn, *args, **kwargs)


def flag(value: str | None, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    v = value.lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise InvalidRequest(f"query parameter {name} must be true or false", param=name)
