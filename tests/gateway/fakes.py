"""Fake replicas as small real HTTP servers on 127.0.0.1, and a gateway built in-process around them.

Everything runs on the test's own event loop: uvicorn serves each fake
replica and the gateway from a socket bound to port 0; the client is httpx
over real TCP. Each fake counts its calls, so tests assert exact counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import uvicorn

from dedicate.control.auth import Principal
from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.errors import Unauthorized
from dedicate.domain.records import Address, Endpoint, Replica
from dedicate.domain.replicas import ReplicaFacts
from dedicate.domain.routes import Route as NamedRoute
from dedicate.gateway.app import GatewayFront
from dedicate.gateway.health import HealthPolicy
from dedicate.gateway.proxy import Gateway
from dedicate.gateway.routing import RoutingTable
from dedicate.settings import GatewaySettings

T = TypeVar("T")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one test scenario on a fresh loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[int]:
    """Serve an ASGI app on 127.0.0.1:<free port> in this loop; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    config = uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1,
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        server.force_exit = True
        await task
        sock.close()


class FakeReplica:
    """An OpenAI-ish replica whose behaviour the test sets: ``mode`` is one of

    ``ok`` (JSON with usage), ``sse`` (``events`` chunks, each released by ``gate``
    when set, then a usage chunk if asked for, then [DONE]), ``status`` (answer
    ``status`` with an error body), ``hang`` (never answer), ``cut`` (two SSE
    chunks, then the connection dies), ``slow`` (answer as ``ok`` once ``release`` is set).
    """

    def __init__(self, name: str, mode: str = "ok", status: int = 500, events: int = 3) -> None:
        self.name = name
        self.mode = mode
        self.status = status
        self.events = events
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []  # per call: the authorization header it got
        self.in_progress = 0
        self.gate: asyncio.Queue[None] | None = None  # with sse: one item releases one chunk
        self.sent: list[int] = []  # per call: chunks sent so far
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self.release = asyncio.Event()  # with slow: set, every held answer goes
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls += 1
        self.authorizations.append(next((v.decode() for k, v in scope["headers"] if k == b"authorization"), None))
        body = json.loads(raw) if raw else {}
        self.bodies.append(body)
        self.in_progress += 1
        try:
            await getattr(self, f"_{self.mode}")(body, receive, send)
        finally:
            self.in_progress -= 1

    async def _ok(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        out = {"id": "cmpl-1", "object": "chat.completion", "model": body.get("model"), "replica": self.name,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
        data = json.dumps(out).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def _status(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        data = json.dumps({"error": {"message": f"{self.name} says {self.status}", "type": "x", "param": None,
                                     "code": None}}).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    async def _slow(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        await self.release.wait()
        await self._ok(body, receive, send)

    async def _hang(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        await self._until_disconnect(receive)

    async def _until_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnects += 1
        self.disconnected.set()

    async def _sse(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        index = len(self.sent)
        self.sent.append(0)
        watcher = asyncio.ensure_future(self._until_disconnect(receive))
        try:
            for i in range(self.events):
                if self.gate is not None:
                    gate = asyncio.ensure_future(self.gate.get())
                    await asyncio.wait({gate, watcher}, return_when=asyncio.FIRST_COMPLETED)
                    if watcher.done():
                        gate.cancel()
                        return
                chunk = {"id": "c", "object": "chat.completion.chunk", "replica": self.name,
                         "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
                if (body.get("stream_options") or {}).get("include_usage"):
                    chunk["usage"] = None
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                            "more_body": True})
                self.sent[index] += 1
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": "c", "object": "chat.completion.chunk", "choices": [],
                         "usage": {"prompt_tokens": 5, "completion_tokens": self.events,
                                   "total_tokens": 5 + self.events}}
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(usage).encode() + b"\n\n",
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        finally:
            watcher.cancel()

    async def _cut(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(2):
            await send({"type": "http.response.body", "body": f"data: {{\"n\": {i}}}\n\n".encode(), "more_body": True})
        raise RuntimeError("the fake replica dies mid-stream")


class ResettingReplica:
    """A raw TCP server that reads a request and closes the connection before any answer."""

    def __init__(self) -> None:
        self.calls = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ResettingReplica:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                await reader.readuntil(b"\r\n\r\n")
                self.calls += 1
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def make_endpoint(name: str = "alice/chat", owner: str = "alice", *, state: EndpointState = EndpointState.STARTED,
                  intent: Intent = Intent.RUN, desired: int = 1, ep_id: str | None = None) -> Endpoint:
    return Endpoint(
        id=ep_id or f"endpoint-{name.replace('/', '-')}", name=name, owner=owner, model="dedicate/tiny-chat",
        hardware="1x_cpu", display_name=name, min_replicas=min(desired, 1), max_replicas=max(desired, 1),
        desired_replicas=desired, inactive_timeout=None, disable_prompt_cache=False,
        disable_speculative_decoding=False, availability_zone=None, cents_per_minute=Decimal(1), intent=intent,
        state=state, state_changed_at=T0, status_message="", failures_before_ready=0, created_at=T0,
        updated_at=T0, deleted_at=None, version=1)


def make_replica(replica_id: str, endpoint: Endpoint, url: str, *, ready: bool = True) -> Replica:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    facts = ReplicaFacts(placed_at=T0, launched_at=T0, first_ready_at=T0 if ready else None,
                         last_probe_ok_at=T0 if ready else None, probe_failures=0, exit_code=None,
                         stop_requested_at=None, stopped_at=None)
    return Replica(id=replica_id, endpoint_id=endpoint.id, engine="fake", node="local", slots=(0,), token="rtok",
                   address=Address(host, int(port)), pid=None, process_started=None, log_path=None, created_at=T0,
                   facts=facts, stop_reason=None, version=1)


def stopping(r: Replica) -> Replica:
    return replace(r, facts=replace(r.facts, stop_requested_at=T0))


def failing_probes(r: Replica, failures: int = 1) -> Replica:
    return replace(r, facts=replace(r.facts, probe_failures=failures))


class FakeClock:
    """The gateway's monotonic clock for limits and health: moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


KEYS = {
    "k-alice": Principal("alice", False, "key_alice"),
    "k-alice2": Principal("alice", False, "key_alice2"),
    "k-alice3": Principal("alice", False, "key_alice3"),
    "k-bob": Principal("bob", False, "key_bob"),
    "k-admin": Principal("admin", True, "key_admin"),
}


def lookup(header: str | None) -> Principal:
    if header is None:
        raise Unauthorized("authentication required")
    token = header.removeprefix("Bearer ")
    if token not in KEYS:
        raise Unauthorized("authentication failed: the API key is not valid")
    return KEYS[token]


@dataclass
class World:
    """What a test builds: endpoints and replicas the loader returns, and the gateway serving them."""

    endpoints: list[Endpoint] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    loads: int = 0
    routes: list[NamedRoute] = field(default_factory=list)  # v2 endpoints: names over traffic splits

    def load(self) -> tuple[list[Endpoint], list[Replica]]:
        self.loads += 1
        return list(self.endpoints), list(self.replicas)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def gateway(world: World, config: GatewaySettings | None = None, clock: FakeClock | None = None,
                  seed: int = 1, lookup_fn: Callable[[str | None], Principal] = lookup
                  ) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """The gateway over ``world``, served on loopback; yields it and a client for it (alice's key)."""
    import random

    cfg = config or GatewaySettings()
    mono = clock or FakeClock()
    table = RoutingTable(world.load, ttl_s=cfg.table_ttl_s, rng=random.Random(seed), monotonic=mono,
                         health=HealthPolicy(cfg.failures_to_eject, cfg.ejection_base_s, cfg.ejection_max_s),
                         load_routes=lambda: list(world.routes))
    gw = Gateway(table, lookup_fn, cfg)
    async with contextlib.AsyncExitStack() as stack:
        port = await stack.enter_async_context(serve(GatewayFront(_not_found, gw)))
        client = await stack.enter_async_context(httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30.0, headers={"authorization": "Bearer k-alice"}))
        try:
            yield gw, client
        finally:
            await gw.aclose()


@contextlib.asynccontextmanager
async def replicas(*fakes: FakeReplica) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for f in fakes:
            f.port = await stack.enter_async_context(serve(f))
        yield


def chat(model: str = "alice/chat", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (generously) until ``check()`` holds; fails the test past ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.01)


