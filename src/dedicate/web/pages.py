"""The console's pages: server-rendered HTML over the same service calls and wire objects as the API.

A page only reads (GET). Every change (deploy, stop, start, edit, delete, keys) is made by the
page's script calling the public REST API with the signed-in key (see ``session``), exactly as a
client would. A visitor without a valid key is sent to the sign-in page and sees nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from dedicate.api.deps import call, services_of
from dedicate.api.routes.v2_endpoints import deployments
from dedicate.api.schemas import (
    ApiKeyOut,
    BudgetOut,
    CatalogList,
    DedicatedEndpoint,
    EventOut,
    Hardware,
    NodeOut,
    OwnerOut,
    QueueEntryOut,
    ReplicaOut,
    UsageOut,
)
from dedicate.api.schemas_v2_analytics import AnalyticsOut
from dedicate.api.schemas_v2_endpoints import route_shares
from dedicate.control.analytics import analytics
from dedicate.control.auth import Principal
from dedicate.control.deployments import MAX_PAGE, RouteView
from dedicate.control.services import DEFAULT_DEPLOYMENT, Services
from dedicate.domain.errors import DedicateError, Unauthorized
from dedicate.metering.ledger import month_of
from dedicate.web import charts, present
from dedicate.web.session import cleared_cookie, cookie_key, csrf_token, same_origin, session_cookie

router = APIRouter(include_in_schema=False)
env = Environment(loader=PackageLoader("dedicate.web", "templates"), autoescape=select_autoescape(default=True),
                  trim_blocks=True, lstrip_blocks=True)
env.filters["money"] = present.money
env.filters["rate"] = present.rate
env.filters["percent"] = present.percent
env.filters["shutdown"] = present.shutdown_words
env.globals["tone"] = present.tone

# Scripts and styles come from this server only, and no page may be framed: an injected tag runs nothing.
HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff", "referrer-policy": "same-origin", "cache-control": "no-store",
    "x-frame-options": "DENY",
}
STATIC = {name: (resources.files("dedicate.web").joinpath("static", name).read_bytes(), kind)
          for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css"))}
MAX_FORM = 4096
CHART_SPAN = timedelta(hours=2)
CHART_STEP = timedelta(minutes=5)


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    csrf: str

    @property
    def owner(self) -> str:
        return self.principal.owner


def render(template: str, viewer: Viewer | None, status: int = 200, **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(viewer=viewer, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


async def viewer_of(request: Request) -> Viewer | None:
    """The signed-in caller, from the session cookie; None when it is missing, unknown or revoked."""
    key = cookie_key(request.headers.get("cookie"))
    if key is None:
        return None
    try:
        p: Principal = await request.app.state.principal(f"Bearer {key}")
    except Unauthorized:
        return None
    return Viewer(p, csrf_token(key)) if p.manages else None


def to_signin() -> Response:
    return RedirectResponse("/signin", status_code=303, headers={"cache-control": "no-store"})


# signing in and out --------------------------------------------------------------------------------

@router.get("/signin")
async def signin_page(request: Request) -> Response:
    if await viewer_of(request) is not None:
        return RedirectResponse("/", status_code=303)
    return render("signin.html", None)


async def form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}


@router.post("/signin")
async def signin(request: Request) -> Response:
    if not same_origin(dict(request.headers)):
        return render("signin.html", None, 403, error="Sign in from this server's own page.")
    key = (await form(request)).get("key", "").strip()
    if not key:
        return render("signin.html", None, 400, error="Paste your API key (it starts with ddc_).")
    try:
        p: Principal = await request.app.state.principal(f"Bearer {key}")
    except Unauthorized as exc:
        return render("signin.html", None, 401, error=exc.message)
    if not p.manages:
        return render("signin.html", None, 403, error="This key can only call models (its scope is inference): "
                                                      "sign in with a key of scope manage.")
    secure = request.url.scheme == "https"
    return RedirectResponse("/", status_code=303, headers={"set-cookie": session_cookie(key, secure=secure)})


@router.post("/signout")
async def signout(request: Request) -> Response:
    v = await viewer_of(request)
    if v is not None and (await form(request)).get("csrf") != v.csrf:
        return render("error.html", v, 403, message="That sign-out did not come from this console.")
    return RedirectResponse("/signin", status_code=303, headers={"set-cookie": cleared_cookie()})


@router.get("/static/{name}")
async def static(name: str) -> Response:
    found = STATIC.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(found[0], media_type=found[1], headers={"cache-control": "no-cache",
                                                            "x-content-type-options": "nosniff"})


# endpoints ---------------------------------------------------------------------------------------

def endpoint_rows(svc: Services, owner: str) -> list[present.EndpointRow]:
    """Every endpoint of the owner, each with its deployments, as GET /v2/.../endpoints lists them."""
    d = deployments(svc)
    rows: list[present.EndpointRow] = []
    after: str | None = None
    while True:
        page, after = d.list_endpoints(owner, filter=None, order_by=None, after=after, limit=MAX_PAGE)
        rows.extend(row_of(rv) for rv in page)
        if after is None:
            return rows


def row_of(rv: RouteView) -> present.EndpointRow:
    members = [(v.endpoint.deployment_name or DEFAULT_DEPLOYMENT, DedicatedEndpoint.of(v)) for v in rv.deployments]
    return present.endpoint_row(rv.route.id, rv.route.name, members, route_shares(rv))


@router.get("/")
async def home(request: Request) -> Response:
    v = await viewer_of(request)
    if v is None:
        return to_signin()
    rows = await call(endpoint_rows, services_of(request), v.owner)
    return render("endpoints.html", v, rows=rows, page="endpoints")


@router.get("/ui/endpoints/rows")
async def home_rows(request: Request, only: str = "") -> Response:
    """The endpoints table's rows alone (or one endpoint's): what a page polls to stay current."""
    v = await viewer_of(request)
    if v is None:
        return Response(status_code=401, headers={"cache-control": "no-store"})
    rows = await call(endpoint_rows, services_of(request), v.owner)
    if only:
        rows = [r for r in rows if r.id == only]
    return render("_rows.html", v, rows=rows)


def detail(svc: Services, p: Principal, key: str) -> dict[str, Any]:
    d = deployments(svc)
    if key.startswith("endpoint-"):  # a deployment's v1 id, as the deploy form knows it: its endpoint's page
        key = svc.get(p, key).endpoint.route_id or key
    rv = d.get_endpoint(p.owner, key)
    now = svc.clock.now()
    start = now - CHART_SPAN
    ids = [v.endpoint.id for v in rv.deployments]
    intervals = svc.store.intervals_of(ids, start, now)
    members = []
    for view in rv.deployments:
        ep = view.endpoint
        mine = [i for i in intervals if i.endpoint_id == ep.id]
        replicas = sorted(svc.replicas(p, ep.id, include_stopped=True), key=lambda r: r.id, reverse=True)
        events = [EventOut.of(e) for e in svc.events(p, ep.id)]
        members.append({
            "wire": DedicatedEndpoint.of(view), "name": ep.deployment_name,
            "replicas": [ReplicaOut.of(r) for r in replicas[:20]],
            "decisions": [e for e in events if e.kind == "scaled"][-10:][::-1],
            "failures": [e for e in events if e.kind == "failed"][-3:][::-1],
            "events": events[-15:][::-1],
            "charts": [charts.ready_replicas(mine, start, now, CHART_STEP), charts.cost(mine, start, now, CHART_STEP)],
        })
    a = AnalyticsOut.of(analytics(d, p.owner, rv.route.id, deployment=None, start=start, end=now,
                                  granularity="1m", series=True))
    requests = charts.Series("Requests per minute", "requests",
                             [(pt.timestamp, pt.values.get("requests", 0.0)) for pt in a.time_series])
    ttft = charts.Series("Time to first token, p50", "ms",
                         [(pt.timestamp, pt.values["ttftP50Ms"]) for pt in a.time_series if "ttftP50Ms" in pt.values])
    return {"row": row_of(rv), "route": rv.route, "members": members, "traffic": [requests, ttft]}


@router.get("/endpoints/{key}")
async def endpoint_page(request: Request, key: str) -> Response:
    v = await viewer_of(request)
    if v is None:
        return to_signin()
    try:
        found = await call(detail, services_of(request), v.principal, key)
    except DedicateError as exc:
        return render("error.html", v, exc.status, message=exc.message)
    return render("endpoint.html", v, page="endpoints", chart=charts.svg, **found)


# deploying and the catalog -----------------------------------------------------------------------

def catalog(svc: Services, owner: str) -> dict[str, Any]:
    cat = svc.settings.catalog
    now = svc.clock.now()
    models = [{"wire": wire, "shapes": [present.shape(Hardware.of(o, now)) for o in svc.hardware(wire.id)]}
              for wire in CatalogList.of(cat).data]
    tunes = []
    for t in svc.store.owner_models(owner):
        base = cat.models.get(t.base)
        shapes = [present.shape(Hardware.of(o, now)) for o in svc.hardware(t.name)] if base else []
        reason = ("" if shapes else
                  f"its base {t.base} is not in this installation's catalog" if base is None else
                  f"no hardware of this installation fits or runs its base {t.base}")
        tunes.append({"model": t, "shapes": shapes, "reason": reason})
    return {"models": models, "tunes": tunes}


@router.get("/models")
async def models_page(request: Request, runnable: str = "") -> Response:
    v = await viewer_of(request)
    if v is None:
        return to_signin()
    found = await call(catalog, services_of(request), v.owner)
    only = runnable in ("1", "on", "true")
    if only:
        found["models"] = [m for m in found["models"] if m["shapes"]]
    return render("models.html", v, page="models", runnable=only, **found)


@router.get("/deploy")
async def deploy_page(request: Request, model: str = "", hardware: str = "") -> Response:
    v = await viewer_of(request)
    if v is None:
        return to_signin()
    svc = services_of(request)
    found = await call(catalog, svc, v.owner)
    names = [m["wire"].id for m in found["models"] if m["shapes"]] + [t["model"].name for t in found["tunes"]
                                                                      if t["shapes"]]
    chosen = model if model in names else (names[0] if names else "")
    return render("deploy.html", v, page="deploy", names=names, chosen=chosen, hardware=hardware,
                  timeouts=[0, 5, 10, 15, 30, 60, 120, 240, 1440])


# prices, bills, keys, operators ------------------------------------------------------------------

def price_list(svc: Services) -> list[present.Shape]:
    now = svc.clock.now()
    return [present.shape(Hardware.of(o, now), svc.availability(o.hardware)) for o in svc.hardware(None)]


@router.get("/pricing")
async def pricing_page(request: Request) -> Response:
    v = await viewer_of(request)
    if v is None:
        return to_signin()
    return render("pricing.html", v, page="pricing", shapes=await call(price_list, services_of(request)))


def bill(svc: Services, p: Principal) -> dict[str, Any]:
    usage = UsageOut.of(svc.billing.usage(p, None, None, None))
    budget = BudgetOut.of(svc.billing.budget(p, None))
    month = month_of(svc.clock.now())
    invoice = json.loads(svc.billing.invoice(p, month, None))
    return {"usage": usage, "budget": budget, "invoice": invoice, "rows": endpoint_rows(svc, p.owner),
            "month": month}


@router.get("/billing")
async def billing_page(request: Request) -> Response:
    v = await viewer_of(request)
    if v is None:
        return to_signin()
    return render("billing.html", v, page="billing", **await call(bill, services_of(request), v.principal))


@router.get("/keys")
async def keys_page(request: Request) -> Response:
    v = await viewer_of(request)
    if v is None:
        return to_signin()
    keys = await call(services_of(request).list_keys, v.principal)
    return render("keys.html", v, page="keys", keys=[ApiKeyOut.of(k) for k in keys])


def operators(svc: Services, p: Principal) -> dict[str, Any]:
    owners = sorted({k.owner for k in svc.list_keys(p, all_owners=True)})
    return {"owners": [OwnerOut.of(svc.quota(p, o)) for o in owners],
            "nodes": [NodeOut.of(n) for n in svc.nodes_view(p)],
            "queue": [QueueEntryOut.of(q) for q in svc.queue_view(p)]}


@router.get("/admin")
async def admin_page(request: Request) -> Response:
    v = await viewer_of(request)
    if v is None:
        return to_signin()
    if not v.principal.is_admin:
        return render("error.html", v, 403, message="This page is for admins: sign in with an admin key.")
    return render("admin.html", v, page="admin", **await call(operators, services_of(request), v.principal))
