"""/v1/billing: usage, invoices and budgets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BeforeValidator

from dedicate.api.deps import BoundedRoute, Caller, Svc, call, owner_param, time_param
from dedicate.api.errors import responses
from dedicate.api.schemas import BudgetOut, Invoice, UsageOut
from dedicate.control.inputs import BudgetUpdate

router = APIRouter(prefix="/v1/billing", route_class=BoundedRoute, tags=["billing"])
Owner = Annotated[str | None, Query(description="admins: another owner's bill (an owner name; empty: your own)"),
                  BeforeValidator(owner_param)]


@router.get("/usage", response_model=UsageOut, responses=responses(400, 403))
async def usage(
    p: Caller, svc: Svc, owner: Owner = None,
    start: Annotated[datetime | None, time_param("start"),
                     Query(description="ISO-8601, no zone: UTC; default: the start of this month")] = None,
    end: Annotated[datetime | None, time_param("end"), Query(description="ISO-8601; default: now")] = None,
) -> UsageOut:
    return UsageOut.of(await call(svc.billing.usage, p, start, end, owner))


@router.get("/invoices/{month}", response_model=Invoice, responses=responses(400, 403))
async def invoice(p: Caller, svc: Svc, month: str, owner: Owner = None) -> Response:
    """``month`` is YYYY-MM (UTC); the invoice's canonical bytes, as the ledger makes them."""
    return Response(await call(svc.billing.invoice, p, month, owner), media_type="application/json")


@router.get("/budget", response_model=BudgetOut, responses=responses(403))
async def get_budget(p: Caller, svc: Svc, owner: Owner = None) -> BudgetOut:
    return BudgetOut.of(await call(svc.billing.budget, p, owner))


@router.put("/budget", response_model=BudgetOut, responses=responses(400, 403))
async def set_budget(p: Caller, svc: Svc, body: BudgetUpdate, owner: Owner = None) -> BudgetOut:
    return BudgetOut.of(await call(svc.billing.set_budget, p, body, owner))
