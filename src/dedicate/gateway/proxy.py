"""One request through the gateway, as a raw ASGI exchange (no framework on the hot path).

    auth (cached) → body (capped) → limits → endpoint by name → owner check
      → held while no replica is ready (bounded queue, bounded time)
      → try a replica (P2C); before any byte reached the client, a failure
        (refused, reset, per-try timeout, 5xx, the replica stopping or failing
        its probes while the request waits) is tried on another replica
      → answer streamed back chunk by chunk; usage counted on the way

Every slot taken (limits, a replica's in-flight count, the endpoint's
in-flight or queued count) is given back in a ``finally``: a finished, failed
or cancelled request always gives it back, exactly once.

The client going away cancels the exchange: a watcher started after
``WATCH_AFTER_S`` waits on ``receive()`` for ``http.disconnect``, cancels the
request's task, and the ``finally`` cuts the replica's connection, which the
replica sees as its client leaving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, Final

from dedicate.control.auth import Principal
from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.errors import (
    DedicateError,
    EndpointStopped,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    body_timeout,
)
from dedicate.gateway.keys import KeyCache
from dedicate.gateway.limits import Limiter, Limits
from dedicate.gateway.routing import Route, RoutingTable, Target, Unrouted
from dedicate.gateway.signals import EndpointCounters, Signals, usage_in
from dedicate.gateway.upstream import BodyInterrupted, Pool, Response, UpstreamError
from dedicate.settings import GatewaySettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("dedicate.gateway")

WATCH_AFTER_S: Final = 0.02
HOLD_POLL_S: Final = 0.1
TAIL_BYTES: Final = 16 * 1024
HOP_HEADERS: Final = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
                                b"proxy-authenticate", b"proxy-authorization", b"date", b"server"})
JSON_HEADERS: Final = [(b"content-type", b"application/json")]
STREAM_ERROR: Final = (b'data: {"error": {"message": "the replica failed mid-response; the answer is incomplete",'
                       b' "type": "server_error", "param": null, "code": "upstream_error"}}\n\n')


def error_body(exc: DedicateError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The error envelope and hints the management API also answers with (``api/errors.py``)."""
    headers = JSON_HEADERS + [(k.encode(), v.encode()) for k, v in exc.hint_headers().items()]
    return exc.status, headers, json.dumps(exc.envelope()).encode()


def _not_found(name: str) -> NotFound:
    return NotFound(f"model {name!r} not found: it is not an endpoint you can call; pass an endpoint name "
                    "(list them with GET /v1/models)", param="model", code="model_not_found")


def _check_runnable(route: Route) -> None:
    ep = route.endpoint
    if ep.intent is Intent.STOP or ep.state in (EndpointState.STOPPED, EndpointState.STOPPING):
        raise EndpointStopped(
            f"endpoint {ep.name} is stopped; start it with `dedicate endpoints start {ep.id}` "
            f"(or PATCH /v1/endpoints/{ep.id} with {{\"state\": \"STARTED\"}}) and retry", param="model")
    if ep.state is EndpointState.ERROR and not route.targets:
        raise Unavailable(f"endpoint {ep.name} is in ERROR: {ep.status_message}", retry_after_s=30)


def _bounded_tail(tail: bytes, chunk: bytes) -> bytes:
    if len(chunk) >= TAIL_BYTES:
        return chunk[-TAIL_BYTES:]
    tail += chunk
    return tail[-TAIL_BYTES:] if len(tail) > TAIL_BYTES else tail


class Gateway:
    """Routing table, key cache, limits, signals and the upstream pool of one gateway process."""

    def __init__(self, table: RoutingTable, lookup: Callable[[str | None], Principal],
                 config: GatewaySettings | None = None, wall: Callable[[], datetime] | None = None) -> None:
        self.config = config or GatewaySettings()
        self.table = table
        self.monotonic = table.monotonic
        self.wall = wall or (lambda: datetime.now(UTC))  # the minute a finished request counts in
        self.keys = KeyCache(lookup, self.monotonic, self.config.key_cache_ttl_s)
        c = self.config
        self.limiter = Limiter(Limits(c.key_rps, c.key_burst, c.key_concurrency, c.owner_rps, c.owner_burst,
                                      c.owner_concurrency), self.monotonic)
        self.signals = Signals()
        self.pool = Pool(connect_timeout_s=self.config.connect_timeout_s)

    async def aclose(self) -> None:
        self.pool.close()

    async def handle(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        ex = _Exchange(self, scope, receive, send, path)
        try:
            await ex.run()
        except DedicateError as exc:
            if ex.started:
                raise
            status, headers, body = error_body(exc)
            ex.finished = True
            ex.status = status
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except asyncio.CancelledError:
            if not ex.client_gone:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception:
            log.exception("gateway bug on %s", path)
            if ex.started:
                raise
            ex.finished = True
            ex.status = 500
            body = (b'{"error": {"message": "internal error: the gateway hit a bug; it was logged", '
                    b'"type": "server_error", "param": null, "code": "internal_error"}}')
            await send({"type": "http.response.start", "status": 500, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            ex.finish()


class _Exchange:
    """The state of one request; ``run`` does the work, ``finish`` gives every slot back."""

    def __init__(self, gw: Gateway, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        self.gw = gw
        self.scope = scope
        self.receive = receive
        self.send = send
        self.path = path
        self.started = False  # the response status line went to the client
        self.finished = False  # the last byte went (the watcher must not cancel after this)
        self.client_gone = False
        self.task = asyncio.current_task()
        self.watch_timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.releases: list[Callable[[], None]] = []
        self.ep: EndpointCounters | None = None
        self.tokens = (0, 0)
        self.t0 = gw.monotonic()
        self.t_first: float | None = None  # when the answer's status line went
        self.status: int | None = None  # the answer's status, for the deployment's minute

    # the watcher ----------------------------------------------------------------------

    def start_watch(self) -> None:
        if self.watch_timer is not None:
            self.watch_timer.cancel()
            self.watch_timer = None
        if self.watcher is None and not self.finished:
            self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
        if not self.finished and self.task is not None:
            self.client_gone = True
            self.task.cancel()

    def finish(self) -> None:
        self.finished = True
        if self.watch_timer is not None:
            self.watch_timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
        for release in reversed(self.releases):
            release()
        self.releases.clear()
        ep = self.ep
        if ep is not None:
            self.ep = None
            self.gw.signals.add_usage(ep, *self.tokens)
            end = self.gw.monotonic()
            status = self.status if self.status is not None else 499  # the client went before an answer
            first_ms = None if self.t_first is None else (self.t_first - self.t0) * 1000
            self.gw.signals.observe(ep.endpoint_id, self.gw.wall(), status, first_ms, (end - self.t0) * 1000,
                                    self.tokens if self.tokens != (0, 0) else None)

    # the request ---------------------------------------------------------------------

    async def _read_body(self, declared: int | None) -> bytes:
        limit = self.gw.config.body_timeout_s
        try:
            async with asyncio.timeout(limit):
                return await self._read_body_now(declared)
        except TimeoutError:
            raise body_timeout(limit) from None

    async def _read_body_now(self, declared: int | None) -> bytes:
        cap = self.gw.config.max_body_bytes
        too_large = PayloadTooLarge(f"request body too large: at most {cap} bytes; shorten the prompt")
        if declared is not None and declared > cap:
            raise too_large
        message = await self.receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > cap:
                raise too_large
            return bytes(body)
        parts = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise asyncio.CancelledError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise too_large
            parts.append(chunk)
        return b"".join(parts)

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("model is required: pass the endpoint name (see GET /v1/models)", param="model")
        cap = self.gw.config.max_tokens
        for field in ("max_tokens", "max_completion_tokens"):
            value = body.get(field)
            if cap and isinstance(value, int) and value > cap:
                raise InvalidRequest(f"{field} is {value}; this gateway allows at most {cap}", param=field)
        return body

    async def run(self) -> None:
        gw = self.gw
        authorization = None
        declared = None
        for k, v in self.scope["headers"]:
            if k == b"authorization":
                authorization = v.decode("latin-1")
            elif k == b"content-length":
                declared = int(v) if v.isdigit() else None
        principal = await gw.keys.principal(authorization)
        raw = await self._read_body(declared)
        body = self._parse(raw)
        name: str = body["model"]
        drop_usage = False
        if gw.config.inject_usage and body.get("stream") is True:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                raw = json.dumps(body, separators=(",", ":")).encode()
                drop_usage = True
        if gw.limiter.limits.any:
            self.releases.append(gw.limiter.admit(principal.key_id, principal.owner))
        loop = asyncio.get_running_loop()
        self.watch_timer = loop.call_later(WATCH_AFTER_S, self.start_watch)

        found = await gw.table.route(name)
        # a caller's own names, an admin's any, and every endpoint shared with the organization
        owner = found.owner if isinstance(found, Unrouted) else (found.endpoint.owner if found else None)
        if owner is not None and owner != principal.owner and not principal.is_admin \
                and not await gw.table.shared(name):
            raise _not_found(name)
        if isinstance(found, Unrouted):
            raise Unavailable(f"endpoint {name} takes no traffic: no deployment in its traffic split has a weight "
                              f"above 0; give one a weight (PATCH /v2/projects/proj_{found.owner}/endpoints/"
                              f"{found.id} with updateMask=trafficSplit)", retry_after_s=gw.config.retry_after_s)
        route = found
        if route is None:
            raise _not_found(name)
        _check_runnable(route)
        e = route.endpoint
        ep = self.ep = gw.signals.endpoint(e.id, e.name, e.owner)
        ep.requests += 1
        ep.last_request = gw.monotonic()
        if not gw.table.with_room(route):  # no ready replica, or every one at its cap: wait for one
            route = await self._hold(route, loop.time() + gw.config.hold_s)
        ep.admitted()
        self.releases.append(self._endpoint_release(ep))
        await self._forward(route, raw, drop_usage)

    @staticmethod
    def _endpoint_release(ep: EndpointCounters) -> Callable[[], None]:
        def release() -> None:
            ep.in_flight -= 1
        return release

    async def _hold(self, route: Route, deadline: float) -> Route:
        """Wait for a ready replica, in the endpoint's bounded queue; 429 when full, 503 past the deadline."""
        gw, ep = self.gw, self.ep
        assert ep is not None
        name = route.endpoint.name
        if ep.queued >= gw.config.queue_size:
            ep.errors += 1
            raise RateLimited(f"endpoint {name} already has {gw.config.queue_size} requests waiting for a replica; "
                              "retry shortly", retry_after_s=gw.config.retry_after_s)
        self.start_watch()
        ep.held()
        loop = asyncio.get_running_loop()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    ep.errors += 1
                    if route.targets:  # ready, but each serving as many as its cap allows
                        raise Unavailable(f"endpoint {name}: all {len(route.targets)} ready replica(s) are serving "
                                          f"their cap of {route.endpoint.max_concurrency} request(s); retry shortly",
                                          retry_after_s=gw.config.retry_after_s)
                    message = route.endpoint.status_message or route.endpoint.state.value.lower()
                    raise Unavailable(f"endpoint {name} has no ready replica yet ({message}); it is being started, "
                                      "retry shortly", retry_after_s=gw.config.retry_after_s)
                await asyncio.sleep(min(remaining, HOLD_POLL_S))
                found = (await gw.table.refresh(max_age_s=HOLD_POLL_S)).routes.get(name)
                if found is None:
                    raise _not_found(name)
                route = found
                _check_runnable(route)
                if gw.table.with_room(route):
                    return route
        finally:
            ep.queued -= 1

    async def _forward(self, route: Route, raw: bytes, drop_usage: bool) -> None:
        gw = self.gw
        cfg = gw.config
        table = gw.table
        ep = self.ep
        assert ep is not None
        tried: set[str] | None = None
        length = str(len(raw)).encode() + b"\r\n\r\n"
        last_error = "no replica answered"
        for attempt in range(1, cfg.max_tries + 1):
            target = table.choose(table.with_room(route), tried)
            if target is None:
                break
            st = target.state
            st.in_flight += 1
            st.requests += 1
            st.last_request = ep.last_request
            try:
                resp = await gw.pool.request(target.address, target.head(self.path) + length + raw,
                                             cfg.try_timeout_s, table.answering_from_now(target.replica_id))
            except UpstreamError as exc:
                self._failed(target, route)
                last_error = f"replica {target.replica_id}: {exc}"
                tried, route = self._next_try(tried, target, route)
                continue
            except BaseException:
                st.in_flight -= 1
                raise
            if resp.status >= 500 and attempt < cfg.max_tries:
                tried, route = self._next_try(tried, target, route)
                if any(t.replica_id not in tried for t in route.targets):
                    resp.close()
                    self._failed(target, route)
                    last_error = f"replica {target.replica_id} answered {resp.status}"
                    continue
            await self._stream_back(target, route, resp, drop_usage)
            return
        ep.errors += 1
        raise Unavailable(f"endpoint {route.endpoint.name}: no replica could take the request ({last_error}); "
                          "retry shortly", retry_after_s=1)

    def _failed(self, target: Target, route: Route) -> None:
        """A try that ended before any byte reached the client: its slot back, a failure counted."""
        target.state.in_flight -= 1
        target.state.errors += 1
        self.gw.table.record_failure(target, route)

    def _next_try(self, tried: set[str] | None, target: Target, route: Route) -> tuple[set[str], Route]:
        """``target`` added to the replicas tried, and the endpoint's route as the table has it now."""
        return (tried or set()) | {target.replica_id}, self.gw.table.snapshot.routes.get(route.endpoint.name) or route

    async def _stream_back(self, target: Target, route: Route, resp: Response, drop_usage: bool) -> None:
        gw, ep, st = self.gw, self.ep, target.state
        assert ep is not None
        is_sse = False
        headers = []
        for k, v in resp.headers:
            if k in HOP_HEADERS or (k == b"content-length" and drop_usage):
                continue
            if k == b"content-type" and v.startswith(b"text/event-stream"):
                is_sse = True
            headers.append((k, v))
        # which deployment answered: a route's requests are split over several
        headers.append((b"x-dedicate-deployment", route.endpoint.name.encode()))
        drop_usage = drop_usage and is_sse
        outcome = "cancelled"  # until the last byte went: "ok", "5xx" or "interrupted"
        try:
            first = resp.read_nowait()
            self.started = True
            self.status, self.t_first = resp.status, gw.monotonic()
            await self.send({"type": "http.response.start", "status": resp.status, "headers": headers})
            if first is not None and (resp.complete or first == b"") and not drop_usage:
                # the whole answer is here already: one write
                rest = [first]
                while chunk := resp.read_nowait():
                    rest.append(chunk)
                body = b"".join(rest) if len(rest) > 1 else first
                tail = body[-TAIL_BYTES:]
                self.finished = True
                await self.send({"type": "http.response.body", "body": body, "more_body": False})
            else:
                tail = await self._pump(resp, first, drop_usage)
            outcome = "5xx" if resp.status >= 500 else "ok"
        except BodyInterrupted:
            outcome = "interrupted"
            if is_sse:
                self.finished = True
                await self.send({"type": "http.response.body", "body": STREAM_ERROR, "more_body": False})
            else:
                log.warning("replica %s failed mid-answer; the client's connection is cut", target.replica_id)
            return
        finally:
            resp.close()
            st.in_flight -= 1
            if outcome in ("5xx", "interrupted"):
                st.errors += 1
                ep.errors += 1
                gw.table.record_failure(target, route)
            elif outcome == "ok":
                gw.table.record_success(target)
        usage = usage_in(tail)
        if usage is not None:
            self.tokens = usage
            st.tokens_in += usage[0]
            st.tokens_out += usage[1]

    async def _pump(self, resp: Response, first: bytes | None, drop_usage: bool) -> bytes:
        """Pass the body through as it arrives; returns its last ``TAIL_BYTES`` (where usage is)."""
        idle = self.gw.config.idle_timeout_s
        send = self.send
        tail = b""
        pending = b""  # with drop_usage: the start of an event not yet complete
        chunk = first
        while True:
            if chunk is None:
                if self.watcher is None:
                    self.start_watch()
                chunk = await resp.read(idle)
            if not chunk:
                break
            tail = _bounded_tail(tail, chunk)
            if drop_usage:
                chunk, pending = _drop_usage_events(pending + chunk)
            try:
                following = resp.read_nowait()
            except BodyInterrupted:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                raise
            if following == b"":  # that was the last chunk: one write ends the answer
                self.finished = True
                await send({"type": "http.response.body", "body": chunk + pending, "more_body": False})
                return tail
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = following
        self.finished = True
        await send({"type": "http.response.body", "body": pending, "more_body": False})
        return tail


def _drop_usage_events(data: bytes) -> tuple[bytes, bytes]:
    """Complete SSE events of ``data`` minus the usage-only ones (``choices: []``), and the incomplete rest."""
    end = max(data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n"))
    if end < 0:
        return b"", data
    end += 4 if data[end:end + 4] == b"\r\n\r\n" else 2
    complete, rest = data[:end], data[end:]
    if b'"completion_tokens"' not in complete:
        return complete, rest
    kept = []
    for event in complete.replace(b"\r\n", b"\n").split(b"\n\n"):
        if event and not _is_usage_only(event):
            kept.append(event + b"\n\n")
    return b"".join(kept), rest


def _is_usage_only(event: bytes) -> bool:
    if b'"completion_tokens"' not in event:
        return False
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                obj = json.loads(line[5:])
            except ValueError:
                return False
            return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)
    return False
