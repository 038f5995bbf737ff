"""The composition root: one process with the API, the gateway, the web page and the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse

from dedicate import exposition
from dedicate.api import errors as api_errors
from dedicate.api.deps import Admin
from dedicate.api.routes import billing as billing_routes
from dedicate.api.routes import catalog as catalog_routes
from dedicate.api.routes import endpoints as endpoint_routes
from dedicate.api.routes import identity as identity_routes
from dedicate.api.routes import v2_catalog as v2_catalog_routes
from dedicate.api.routes import v2_endpoints as v2_endpoint_routes
from dedicate.api.schemas import Health
from dedicate.clock import Clock, clock_from_env
from dedicate.control.auth import authenticate
from dedicate.control.autoscaling import Autoscaler
from dedicate.control.handoff import LoopHandoff
from dedicate.control.reconciler import Reconciler
from dedicate.control.services import Services
from dedicate.domain.modelbook import ModelBook
from dedicate.domain.models import TINY_CHAT
from dedicate.domain.records import Endpoint, Replica
from dedicate.engines import registry
from dedicate.gateway import app as gateway_app
from dedicate.gateway.health import HealthPolicy
from dedicate.gateway.proxy import Gateway
from dedicate.gateway.routing import RoutingTable
from dedicate.gateway.signals import families as signal_families
from dedicate.runtimes.base import Node, Runtime
from dedicate.runtimes.local import LocalRuntime
from dedicate.runtimes.nvml import discovered_nodes
from dedicate.settings import Settings
from dedicate.store.db import make_engine, migrate
from dedicate.store.repos import Store
from dedicate.store.usage import SIGNAL_ROWS_KEPT_S
from dedicate.web import pages as console_pages
from dedicate.web.session import CookieBearer

log = logging.getLogger("dedicate")
ADMIN_OWNER = "admin"


@dataclass
class Parts:
    settings: Settings
    clock: Clock
    store: Store
    runtime: Runtime
    reconciler: Reconciler
    services: Services
    table: RoutingTable
    gateway: Gateway
    autoscaler: Autoscaler | None = None
    handoff: LoopHandoff = field(default_factory=LoopHandoff)  # service calls into loop-owned objects


def instance_id(data_dir: Path) -> str:
    """A stable id of this installation: its replica processes carry it."""
    path = data_dir / "instance-id"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(uuid.uuid4().hex[:16])
        tmp.replace(path)
    return path.read_text().strip()


def ensure_admin_key(store: Store, data_dir: Path, clock: Clock) -> str | None:
    """Create the admin key on first start; returns the secret only when it was just created."""
    key_file = data_dir / "admin.key"
    if key_file.exists() and store.find_key(key_file.read_text().strip()) is not None:
        return None
    if store.has_admin_key() and not key_file.exists():
        return None
    _, secret = store.create_key(ADMIN_OWNER, is_admin=True, name="admin", now=clock.now())
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(key_file, 0o600)
    return secret


def make_runtime(settings: Settings) -> Runtime:
    """The runtime the config names: this machine's processes (the default), or a Ray cluster's actors."""
    gpu_types = {h.gpu_type for h in settings.catalog.hardware.values() if not h.is_cpu}
    r = settings.runtime
    if r.kind == "ray":
        from dedicate.runtimes.ray import RayOptions, RayRuntime

        assert r.address is not None  # the settings refuse ray without an address
        return RayRuntime(RayOptions(address=r.address, namespace=r.namespace, node_ip_address=r.node_ip_address,
                                     placement_timeout_s=r.placement_timeout_s, refresh_s=r.refresh_s,
                                     request_resources=r.request_resources, port_dir=r.port_dir,
                                     node_labels=dict(r.node_labels)), gpu_types)
    nodes = list(settings.declared_nodes)
    if not nodes:  # declared nodes describe the machine; else this machine's GPUs are nodes
        nodes.extend(discovered_nodes(settings.gpu.discover, gpu_types))
    if settings.cpu_slots > 0:
        nodes.append(Node("local", "cpu", settings.cpu_slots))
    return LocalRuntime(settings.data_dir, instance_id(settings.data_dir), nodes)


def build_parts(settings: Settings, clock: Clock | None = None) -> Parts:
    clock = clock or clock_from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    migrate(engine)
    store = Store(engine)
    if isinstance(settings.catalog.models, ModelBook):  # owners' fine-tunes are found in the store
        settings.catalog.models.attach(store.model_weights)
    runtime = make_runtime(settings)
    reconciler = Reconciler(store, runtime, settings, clock)
    # Services run in the API's worker threads: what they call on loop-owned objects is handed over.
    handoff = LoopHandoff()
    services = Services(store, settings, clock, runtime.nodes, handoff.wrap(reconciler.wake.set))

    def load() -> tuple[list[Endpoint], list[Replica]]:
        return store.list_endpoints(), store.live_replicas()

    g = settings.gateway
    table = RoutingTable(load, ttl_s=g.table_ttl_s,
                         health=HealthPolicy(g.failures_to_eject, g.ejection_base_s, g.ejection_max_s),
                         load_routes=store.live_routes)
    gateway = Gateway(table, lambda header: authenticate(store, header), g, wall=clock.now)
    services.key_revoked = handoff.wrap(gateway.keys.forget)
    # Scales only while this process holds the reconciler lease, through its fenced store.
    autoscaler = Autoscaler(store, settings, clock, runtime.nodes,
                            leader=lambda: reconciler.store if reconciler.is_leader else None,
                            wake=reconciler.wake.set)
    return Parts(settings, clock, store, runtime, reconciler, services, table, gateway, autoscaler, handoff)


async def flush_signals(parts: Parts, gateway_id: str, stop: asyncio.Event) -> None:
    """Every ``signals_interval_s``: this gateway's counters and token usage to the store."""
    gw = parts.gateway
    # Signal rows nobody wrote for this long (a dead process's) are deleted, long after readers stop counting them.
    keep_s = max(SIGNAL_ROWS_KEPT_S, 10 * parts.settings.autoscaling.signal_fresh_s)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), parts.settings.gateway.signals_interval_s)
        now = parts.clock.now()
        known = [(r.endpoint.id, r.endpoint.name, r.endpoint.owner) for r in gw.table.snapshot.routes.values()]
        rows, deltas = gw.signals.collect(now, gw.monotonic(), known)
        minutes = gw.signals.collect_minutes(now)
        try:
            await asyncio.to_thread(parts.store.write_signals, gateway_id, now, rows, deltas, keep_s)
            await asyncio.to_thread(parts.store.write_minutes, gateway_id, minutes, now)
        except Exception:  # the database is away: keep the usage for the next write
            log.exception("writing gateway signals failed; retrying in %ss", parts.settings.gateway.signals_interval_s)
            gw.signals.restore(deltas)


def server_families(parts: Parts) -> list[exposition.Metric]:
    """Endpoints, replicas and this month's costs: three reads, however many endpoints (in a worker thread)."""
    endpoints = parts.store.list_endpoints()
    replicas = parts.store.live_replicas()
    costs = parts.services.billing.costs_this_month()
    by_state = sorted(Counter(e.state.value for e in endpoints).items())
    by_status = sorted(Counter(r.status.value for r in replicas).items())
    return [
        exposition.gauge("dedicate_endpoints", "Endpoints (not deleted) by state.", ("state",),
                         [((state,), n) for state, n in by_state]),
        exposition.gauge("dedicate_replicas", "Live replicas by status.", ("status",),
                         [((status,), n) for status, n in by_status]),
        exposition.gauge("dedicate_endpoint_cost_this_month_cents",
                         "Charges of the calendar month (UTC) so far, in cents.", ("endpoint", "owner"),
                         [((e.id, e.owner), float(costs.get(e.id, 0))) for e in endpoints]),
    ]


def gateway_families(gw: Gateway) -> list[exposition.Metric]:
    """Read on the event loop, where the counters change."""
    return signal_families(gw.signals, list(gw.table.states.values()), gw.monotonic(), time.time())


def create_app(parts: Parts) -> CookieBearer:
    """The whole server's ASGI app: the console's session turned into a key (``web/session``), then the
    gateway's inference paths (``.app``), then the FastAPI app (``.app.app``) with the API and the console."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        parts.handoff.bind(asyncio.get_running_loop())
        spec = parts.settings.catalog.models.get(TINY_CHAT)
        # The demo model is built ahead of its first deploy where an enabled engine would load its weights,
        # by the reconciler's own preparer: a deploy during the build waits for it instead of building again.
        if spec is not None and any(registry.engine(e).needs_local_weights
                                    for e in spec.engines if e in parts.settings.catalog.engines):
            await parts.reconciler.weights.status(spec)
        loop_task = asyncio.create_task(parts.reconciler.run(stop))
        autoscaler = parts.autoscaler
        autoscale_task = asyncio.create_task(autoscaler.run(stop)) if autoscaler is not None else None
        gateway_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        signals_task = asyncio.create_task(flush_signals(parts, gateway_id, stop))
        try:
            yield
        finally:
            stop.set()
            parts.reconciler.wake.set()
            await loop_task
            if autoscaler is not None and autoscale_task is not None:
                await autoscale_task
                await autoscaler.aclose()
            await signals_task
            await parts.reconciler.shutdown()
            await parts.gateway.aclose()
            await asyncio.to_thread(parts.runtime.close)

    app = FastAPI(title="dedicate", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.services = parts.services
    app.state.gateway = parts.gateway
    app.state.principal = parts.gateway.keys.principal  # the management API's callers, through one cache
    api_errors.install(app)
    app.include_router(endpoint_routes.router)
    app.include_router(catalog_routes.router)
    app.include_router(billing_routes.router)
    app.include_router(identity_routes.router)
    app.include_router(v2_catalog_routes.router)
    app.include_router(v2_catalog_routes.uploads)
    app.include_router(v2_endpoint_routes.router)
    app.include_router(gateway_app.router, responses=api_errors.responses())
    app.include_router(console_pages.router)

    @app.get("/healthz", response_model=Health, tags=["server"])
    async def healthz() -> Health:
        """No key needed: ok once the server is up."""
        return Health()

    @app.get("/metrics", response_class=PlainTextResponse, responses=api_errors.referenced(403), tags=["server"])
    async def metrics(_: Admin) -> PlainTextResponse:
        """Admins: Prometheus text."""
        server = await asyncio.to_thread(server_families, parts)
        text = exposition.render(server, gateway_families(parts.gateway))  # one registry, one page
        return PlainTextResponse(text, media_type=exposition.CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                              description="dedicate's management API (Together's flat v1 shape) and "
                                          "OpenAI-compatible gateway; see docs/api.md")
            gateway_app.document_inference(doc, api_errors.referenced(400, 404, 413, 429, 503))
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return CookieBearer(gateway_app.GatewayFront(app, parts.gateway))


def bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP. Without it
    # every answer written in two parts waited for the client's delayed ACK: 40 ms a request.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


# The cyclic collector's youngest generation holds 700 allocations by default. A pass over 10,000
# replicas makes its short-lived objects far faster than that, so they reach the oldest generation
# before they die, and every few passes a full collection walks everything the store's caches hold
# (150 ms at 10,000 replicas). With room for 50,000 a pass's objects die young. Reference counting
# still frees every object outside a cycle at once: this only delays the cycles, a few MB at most.
COLLECTOR_THRESHOLDS = (50_000, 20, 10)


def tune_collector() -> None:
    """Once, before serving: start-up objects (framework, ORM) are never scanned again, and a pass's
    objects are collected young."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def admin_key_notice(secret: str, key_file: Path, to_terminal: bool) -> str:
    """What start-up says of a new admin key. The secret is shown to a person at a terminal only: under
    a service manager or in a container, standard output is a log, and a log is no place for a key."""
    if to_terminal:
        return f"admin API key (shown once; also in {key_file}):\n  {secret}"
    return f"admin API key created: it is in {key_file} (mode 0600); not printed, as this output is not a terminal"


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parts = build_parts(settings)
    secret = ensure_admin_key(parts.store, settings.data_dir, parts.clock)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    port_file = settings.data_dir / "port"
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    url = f"http://{settings.host}:{port}"
    if secret is not None:
        print(admin_key_notice(secret, settings.data_dir / "admin.key", sys.stdout.isatty()), flush=True)
    print(f"dedicate is serving on {url}  (API and OpenAI-compatible gateway at {url}/v1)",
          flush=True)
    app = create_app(parts)
    tune_collector()
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10,
                            access_log=False, lifespan="on", proxy_headers=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the stop signal once it has shut down gracefully; these handlers
    # (which it restores first) turn that into a clean exit 0 after our own cleanup.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    print("dedicate stopped", file=sys.stderr, flush=True)
