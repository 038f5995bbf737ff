"""The OpenAI-compatible front door: /v1/chat/completions, /v1/completions, /v1/models.

client → auth → endpoint by name → owner check → a ready replica → the
replica's answer streamed back chunk by chunk, unbuffered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from dedicate.control.auth import Principal, authenticate
from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.errors import EndpointStopped, InvalidRequest, NotFound, Unavailable
from dedicate.gateway.routing import Route, RoutingTable, Target

router = APIRouter(prefix="/v1")

MAX_BODY = 4 << 20
HOLD_S = 30.0
MAX_TRIES = 3
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


class Gateway:
    def __init__(self, table: RoutingTable, hold_s: float = HOLD_S) -> None:
        self.table = table
        self.hold_s = hold_s
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=2.0, read=600.0, write=30.0, pool=10.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )

    async def aclose(self) -> None:
        await self.client.aclose()


async def principal(request: Request) -> Principal:
    store = request.app.state.services.store
    return await asyncio.to_thread(authenticate, store, request.headers.get("authorization"))


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _not_found(name: str) -> NotFound:
    return NotFound(
        f"model {name!r} not found: it is not an endpoint you can call; pass an endpoint name "
        "(list them with GET /v1/models)", param="model", code="model_not_found")


async def _resolve(gw: Gateway, p: Principal, name: str) -> Route:
    route = await gw.table.route(name)
    if route is None:
        route = (await gw.table.refresh(force=True)).routes.get(name)
    if route is None or (route.endpoint.owner != p.owner and not p.is_admin):
        raise _not_found(name)
    return route


def _check_runnable(route: Route) -> None:
    ep = route.endpoint
    if ep.intent is Intent.STOP or ep.state in (EndpointState.STOPPED, EndpointState.STOPPING):
        raise EndpointStopped(
            f"endpoint {ep.name} is stopped; start it with `dedicate endpoints start {ep.id}` "
            f"(or PATCH /v1/endpoints/{ep.id} with {{\"state\": \"STARTED\"}}) and retry",
            param="model")
    if ep.state is EndpointState.ERROR:
        raise Unavailable(f"endpoint {ep.name} is in ERROR: {ep.status_message}")


async def _wait_for_replica(gw: Gateway, p: Principal, name: str, exclude: set[str]) -> Target:
    deadline = time.monotonic() + gw.hold_s
    while True:
        route = await _resolve(gw, p, name)
        _check_runnable(route)
        target = gw.table.choose(route.targets, exclude)
        if target is not None:
            return target
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"endpoint {name} has no ready replica yet ({route.endpoint.status_message}); "
                "retry shortly", retry_after_s=5)
        await asyncio.sleep(0.2)
        await gw.table.refresh(force=True)


async def _proxy(request: Request, path: str) -> Response:
    p = await principal(request)
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidRequest(f"request body too large: at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("model is required: pass the endpoint name (see GET /v1/models)",
                             param="model")
    gw = gateway(request)
    tried: set[str] = set()
    last_error = "no replica answered"
    for _ in range(MAX_TRIES):
        target = await _wait_for_replica(gw, p, name, tried)
        tried.add(target.replica_id)
        release = gw.table.acquire(target)
        upstream_req = gw.client.build_request(
            "POST", target.url + path, content=raw,
            headers={"authorization": f"Bearer {target.token}", "content-type": "application/json"})
        try:
            upstream = await gw.client.send(upstream_req, stream=True)
        except httpx.HTTPError as exc:
            release(True)
            last_error = f"replica {target.replica_id} unreachable: {type(exc).__name__}"
            continue
        if upstream.status_code >= 500:
            await upstream.aclose()
            release(True)
            last_error = f"replica {target.replica_id} answered {upstream.status_code}"
            continue
        return _stream_back(upstream, release)
    raise Unavailable(f"endpoint {name}: {last_error}; retry shortly", retry_after_s=2)


def _stream_back(upstream: httpx.Response, release: Any) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        failed = True
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
            failed = False
        except httpx.HTTPError:
            yield b'data: {"error": {"message": "the replica stopped mid-response", ' \
                  b'"type": "server_error", "code": "upstream_error"}}\n\n'
        finally:
            await upstream.aclose()
            release(failed)

    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
    return StreamingResponse(body(), status_code=upstream.status_code, headers=headers)


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "/v1/chat/completions")


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _proxy(request, "/v1/completions")


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    p = await principal(request)
    svc = request.app.state.services
    eps = await asyncio.to_thread(svc.store.list_endpoints, p.owner)
    catalog = svc.settings.catalog
    data = []
    for e in eps:
        spec = catalog.models.get(e.model)
        data.append({
            "id": e.name, "object": "model", "created": int(e.created_at.timestamp()),
            "owned_by": e.owner, "type": "chat", "display_name": e.display_name,
            "context_length": spec.context_length if spec else None, "root": e.model,
            "state": e.state.value,
        })
    return {"object": "list", "data": data}
