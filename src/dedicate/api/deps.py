"""What every route needs: the services, the caller, bounded bodies and checked query parameters."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from dedicate.control.auth import Principal, authenticate
from dedicate.control.billing import parse_time
from dedicate.control.services import Services
from dedicate.domain.errors import Forbidden, InvalidRequest, body_timeout

T = TypeVar("T")
MAX_BODY = 1 << 20


def services_of(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def services(request: Request) -> Services:
    """A coroutine, so FastAPI does not hand it to a worker thread as it does a plain function."""
    return services_of(request)


# Documents the scheme in /openapi.json (and /docs' "Authorize"); the header itself is read by
# ``authenticate``, whose messages say which of missing, unknown and revoked a key is.
bearer = HTTPBearer(auto_error=False, description="a dedicate API key: `Authorization: Bearer ddc_...`")


async def principal(request: Request, _: Annotated[object, Depends(bearer)]) -> Principal:
    known: Principal | None = getattr(request.state, "principal", None)  # checked already (``BoundedRoute``)
    if known is not None:
        return known
    # The gateway's key cache, on the loop: a busy caller costs no thread hop and no query. A key
    # revoked here is forgotten at once; one revoked by another server, within a second.
    cached: Callable[[str | None], Awaitable[Principal]] | None = getattr(request.app.state, "principal", None)
    if cached is not None:
        p = await cached(request.headers.get("authorization"))
    else:
        p = await run_in_threadpool(authenticate, services_of(request).store, request.headers.get("authorization"))
    request.state.principal = p
    return p


INFERENCE_ONLY = ("this API key can only call models (its scope is inference); manage endpoints, keys and "
                  "bills with a key of scope manage")


async def manager(p: Annotated[Principal, Depends(principal)]) -> Principal:
    """A caller of the management API: any key but one of scope ``inference``."""
    if not p.manages:
        raise Forbidden(INFERENCE_ONLY)
    return p


async def admin(p: Annotated[Principal, Depends(manager)]) -> Principal:
    if not p.is_admin:
        raise Forbidden("this needs an admin API key")
    return p


# A dependency runs before the route's query parameters and body are checked: a caller without a
# valid key learns that first, whatever else is wrong with the request.
Svc = Annotated[Services, Depends(services)]
Caller = Annotated[Principal, Depends(manager)]  # every management route
AnyKey = Annotated[Principal, Depends(principal)]  # who am I: any valid key, inference ones too
Admin = Annotated[Principal, Depends(admin)]


# Service calls run in a few worker threads, not one each: 32 callers in 32 threads spend their time
# handing the GIL and the database connections round, and every one of them waits longer.
SERVICE_THREADS = 2
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def _limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(SERVICE_THREADS)
    return limiter


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking service code (database) off the event loop, in one of ``SERVICE_THREADS`` threads."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=_limiter())


def _needs(dependant: Any, call: Callable[..., Any]) -> bool:
    return any(d.call is call or _needs(d, call) for d in dependant.dependencies)


class BoundedRoute(APIRoute):
    """Checks the caller's key first, then refuses a management body over ``MAX_BODY`` before it is parsed.

    FastAPI decodes a JSON body before it runs a route's dependencies: without the key checked here
    first, a caller with no key (or an inference key) would be told what is wrong with the body
    rather than that it may not call the route at all.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        gates = [g for g in (manager, admin) if _needs(self.dependant, g)]
        keyed = bool(gates) or _needs(self.dependant, principal)

        async def bounded(request: Request) -> Response:
            if keyed:
                p = await principal(request, None)
                for gate in gates:
                    p = await gate(p)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY:
                raise InvalidRequest(f"request body too large: at most {MAX_BODY} bytes")
            limit = services_of(request).settings.gateway.body_timeout_s
            try:
                async with asyncio.timeout(limit):  # a stalled sender holds no worker and no connection forever
                    body = await request.body()
            except TimeoutError:
                raise body_timeout(limit) from None
            if len(body) > MAX_BODY:
                raise InvalidRequest(f"request body too large: at most {MAX_BODY} bytes")
            return await handler(request)

        return bounded


# query parameters: checked with today's words, typed in the OpenAPI document -------------------------

def flag(name: str, default: bool) -> BeforeValidator:
    """A boolean query parameter: ``true``/``false``, ``1``/``0``, ``yes``/``no``, any case; empty is the default."""
    def check(value: object) -> bool:
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        v = str(value).lower()
        if v in ("true", "1", "yes"):
            return True
        if v in ("false", "0", "no"):
            return False
        raise InvalidRequest(f"query parameter {name} must be true or false", param=name)
    return BeforeValidator(check)


def owner_param(value: object) -> object:
    """An ``owner`` query parameter: empty is absent (the service checks a name, as for quotas)."""
    return None if value == "" else value


def whole(name: str, lo: int, hi: int) -> BeforeValidator:
    """A whole-number query parameter in [lo, hi]."""
    def check(value: object) -> int:
        text = str(value)
        if not text.isdigit() or not lo <= int(text) <= hi:
            raise InvalidRequest(f"{name} must be a whole number from {lo} to {hi}", param=name)
        return int(text)
    return BeforeValidator(check)


def one_of(name: str, *allowed: str) -> BeforeValidator:
    """A query parameter among ``allowed``; empty is as if absent."""
    def check(value: object) -> str | None:
        if value is None or value == "":
            return None
        if value not in allowed:
            raise InvalidRequest(f"{name} must be {' or '.join(allowed)}", param=name)
        return str(value)
    return BeforeValidator(check)


def time_param(name: str) -> BeforeValidator:
    """An ISO-8601 time; without a zone it is UTC."""
    def check(value: object) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return parse_time(str(value), name)
    return BeforeValidator(check)
