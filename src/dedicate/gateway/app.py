"""The OpenAI-compatible front door: /v1/chat/completions, /v1/completions, /v1/models.

The two inference paths are served by ``GatewayFront``, a plain ASGI
middleware in front of the management API's FastAPI app: no routing table of
paths, dependency injection or validation layer between the socket and the
proxy (``proxy.py``). ``/v1/models`` is an ordinary FastAPI route.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from dedicate.control.auth import Principal
from dedicate.gateway.proxy import Gateway

router = APIRouter(prefix="/v1")

PATHS = {"/v1/chat/completions": "/v1/chat/completions", "/v1/completions": "/v1/completions"}


class GatewayFront:
    """Sends POSTs to the inference paths to the gateway, everything else to ``app``."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = PATHS.get(scope["path"])
            if path is not None:
                await self.gateway.handle(scope, receive, send, path)  # type: ignore[arg-type]
                return
        await self.app(scope, receive, send)


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def principal(request: Request) -> Principal:
    return await gateway(request).keys.principal(request.headers.get("authorization"))


class InferenceRequest(BaseModel):
    """What the gateway reads of an OpenAI-compatible request; every other field reaches the engine as sent."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="the endpoint's name (GET /v1/models)")
    stream: bool = Field(default=False, description="true: server-sent events, passed through as they come")
    max_tokens: int | None = Field(default=None, description="at most [gateway] max_tokens")
    max_completion_tokens: int | None = Field(default=None, description="as max_tokens")


INFERENCE = {"/v1/chat/completions": "A chat completion from one of the caller's endpoints (OpenAI's shape)",
             "/v1/completions": "A text completion from one of the caller's endpoints (OpenAI's shape)"}


def document_inference(doc: dict[str, Any], errors: dict[int | str, dict[str, Any]]) -> None:
    """Adds the paths ``GatewayFront`` serves outside FastAPI to an OpenAPI document.

    ``errors`` maps statuses to schema references of the error envelope the gateway answers with.
    """
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["InferenceRequest"] = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    for path, summary in INFERENCE.items():
        doc["paths"][path] = {"post": {
            "tags": ["inference"], "summary": summary, "operationId": path.strip("/").replace("/", "_"),
            "description": "Served by the gateway in front of the management API: held while no replica is "
                           "ready, retried on another replica, limited per key and owner (docs/gateway.md).",
            "security": [{"HTTPBearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/InferenceRequest"}}}},
            "responses": {"200": {"description": "the replica's answer, as the engine gave it", "content": {
                "application/json": {"schema": {"type": "object", "additionalProperties": True}},
                "text/event-stream": {"schema": {"type": "string"}}}}, **{str(k): v for k, v in errors.items()}},
        }}


class ModelEntry(BaseModel):
    """One endpoint the key can call, in OpenAI's shape, with Together's fields beside."""

    id: str = Field(description="the endpoint's name: pass it as `model`")
    object: Literal["model"] = "model"
    created: int = Field(description="unix seconds")
    owned_by: str
    type: Literal["chat"] = "chat"
    display_name: str
    context_length: int | None
    root: str = Field(description="the catalog model it serves")
    state: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


@router.get("/models", response_model=ModelList, tags=["inference"])
async def models(request: Request) -> ModelList:
    """The caller's own endpoints (admins' too), by name."""
    p = await principal(request)
    svc = request.app.state.services
    eps = await asyncio.to_thread(svc.store.list_endpoints, p.owner)
    catalog = svc.settings.catalog
    data = []
    for e in eps:
        spec = catalog.models.get(e.model)
        data.append(ModelEntry(id=e.name, created=int(e.created_at.timestamp()), owned_by=e.owner,
                               display_name=e.display_name, context_length=spec.context_length if spec else None,
                               root=e.model, state=e.state.value))
    # v2 endpoints whose name is not a deployment's own: the name requests send, over its split
    listed = {e.name for e in eps}
    by_id = {e.id: e for e in eps}
    for r in await asyncio.to_thread(svc.store.routes_page, p.owner, name=None, order="created_at",
                                     descending=False, after=None, limit=10_000):
        first = next((by_id[s.deployment] for s in r.split if s.deployment in by_id), None)
        if r.name in listed or first is None:
            continue
        spec = catalog.models.get(first.model)
        data.append(ModelEntry(id=r.name, created=int(r.created_at.timestamp()), owned_by=r.owner,
                               display_name=r.name, context_length=spec.context_length if spec else None,
                               root=first.model, state=first.state.value))
    return ModelList(data=data)
