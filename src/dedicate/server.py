"""The composition root: one process with the API, the gateway, the web page and the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from dedicate.api import errors as api_errors
from dedicate.api.deps import admin
from dedicate.api.routes import billing as billing_routes
from dedicate.api.routes import catalog as catalog_routes
from dedicate.api.routes import endpoints as endpoint_routes
from dedicate.clock import Clock, clock_from_env
from dedicate.control.models import ensure_builtin
from dedicate.control.reconciler import Reconciler
from dedicate.control.services import Services
from dedicate.domain.models import TINY_CHAT
from dedicate.domain.records import Endpoint, Replica
from dedicate.gateway import app as gateway_app
from dedicate.gateway.routing import RoutingTable
from dedicate.runtimes.base import Node
from dedicate.runtimes.local import LocalRuntime
from dedicate.runtimes.nvml import discovered_nodes
from dedicate.settings import Settings
from dedicate.store.db import make_engine, migrate
from dedicate.store.repos import Store

log = logging.getLogger("dedicate")
ADMIN_OWNER = "admin"


@dataclass
class Parts:
    settings: Settings
    clock: Clock
    store: Store
    runtime: LocalRuntime
    reconciler: Reconciler
    services: Services
    table: RoutingTable


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


def build_parts(settings: Settings, clock: Clock | None = None) -> Parts:
    clock = clock or clock_from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    migrate(engine)
    store = Store(engine)
    nodes = list(settings.declared_nodes)
    if not nodes:  # declared nodes describe the machine; else this machine's GPUs are nodes
        gpu_types = {h.gpu_type for h in settings.catalog.hardware.values() if not h.is_cpu}
        nodes.extend(discovered_nodes(settings.extra.get("gpu", {}), gpu_types))
    if settings.cpu_slots > 0:
        nodes.append(Node("local", "cpu", settings.cpu_slots))
    runtime = LocalRuntime(settings.data_dir, instance_id(settings.data_dir), nodes)
    reconciler = Reconciler(store, runtime, settings, clock)
    services = Services(store, settings, clock, runtime.nodes, reconciler.wake.set)

    def load() -> tuple[list[Endpoint], list[Replica]]:
        return store.list_endpoints(), store.live_replicas()

    return Parts(settings, clock, store, runtime, reconciler, services, RoutingTable(load))


def metrics_text(parts: Parts) -> str:
    lines = ["# TYPE dedicate_endpoints gauge"]
    endpoints = parts.store.list_endpoints()
    for state, n in sorted(Counter(e.state.value for e in endpoints).items()):
        lines.append(f'dedicate_endpoints{{state="{state}"}} {n}')
    lines.append("# TYPE dedicate_replicas gauge")
    for status, n in sorted(Counter(r.status.value for r in parts.store.live_replicas()).items()):
        lines.append(f'dedicate_replicas{{status="{status}"}} {n}')
    lines.append("# TYPE dedicate_endpoint_cost_this_month_cents gauge")
    for e in endpoints:
        cost = parts.services.billing.endpoint_cost(e, 0)["cost_this_month_cents"]
        lines.append(f'dedicate_endpoint_cost_this_month_cents{{endpoint="{e.id}",owner="{e.owner}"}} {cost}')
    for metric, attr in (("in_flight", "in_flight"), ("requests_total", "requests"),
                         ("errors_total", "errors")):
        lines.append(f"# TYPE dedicate_gateway_replica_{metric} "
                     f"{'gauge' if metric == 'in_flight' else 'counter'}")
        for rid, s in sorted(parts.table.stats.items()):
            lines.append(f'dedicate_gateway_replica_{metric}{{replica="{rid}"}} {getattr(s, attr)}')
    return "\n".join(lines) + "\n"


def create_app(parts: Parts) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        spec = parts.settings.catalog.models.get(TINY_CHAT)
        if spec is not None and "transformers" in parts.settings.catalog.engines:
            build = asyncio.create_task(asyncio.to_thread(ensure_builtin, parts.settings.models_dir, spec))
            app.state.model_build = build
        loop_task = asyncio.create_task(parts.reconciler.run(stop))
        try:
            yield
        finally:
            stop.set()
            parts.reconciler.wake.set()
            await loop_task
            await parts.reconciler.shutdown()
            await app.state.gateway.aclose()

    app = FastAPI(title="dedicate", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.services = parts.services
    app.state.gateway = gateway_app.Gateway(parts.table)
    api_errors.install(app)
    app.include_router(endpoint_routes.router)
    app.include_router(catalog_routes.router)
    app.include_router(billing_routes.router)
    app.include_router(gateway_app.router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        await admin(request)
        text = await asyncio.to_thread(metrics_text, parts)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


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
        print(f"admin API key (shown once; also in {settings.data_dir / 'admin.key'}):\n  {secret}",
              flush=True)
    print(f"dedicate is serving on {url}  (API and OpenAI-compatible gateway at {url}/v1)",
          flush=True)
    app = create_app(parts)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10,
                            access_log=False, lifespan="on")
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
