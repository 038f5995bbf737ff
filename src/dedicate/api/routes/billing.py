"""/v1/billing: usage, invoices and budgets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from dedicate.api.deps import call, json_body, principal, services

router = APIRouter(prefix="/v1/billing")


@router.get("/usage")
async def usage(request: Request) -> dict[str, Any]:
    p = await principal(request)
    q = request.query_params
    return await call(services(request).billing.usage, p, q.get("start"), q.get("end"), q.get("owner"))


@router.get("/invoices/{month}")
async def invoice(request: Request, month: str) -> Response:
    p = await principal(request)
    body = await call(services(request).billing.invoice, p, month, request.query_params.get("owner"))
    return Response(body, media_type="application/json")


@router.get("/budget")
async def get_budget(request: Request) -> dict[str, Any]:
    p = await principal(request)
    return await call(services(request).billing.budget, p, request.query_params.get("owner"))


@router.put("/budget")
async def set_budget(request: Request) -> dict[str, Any]:
    p = await principal(request)
    body = await json_body(request)
    return await call(services(request).billing.set_budget, p, body, request.query_params.get("owner"))
