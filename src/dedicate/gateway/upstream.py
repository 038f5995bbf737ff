"""The hop to a replica: a small HTTP/1.1 client with keep-alive pools and streamed bodies.

The gateway spends most of its CPU here, so this is not httpx: one asyncio
protocol per connection, httptools (already under uvicorn) to parse answers,
a request written in one ``write``, body chunks handed over as they arrive.
It measured several times cheaper per request than httpx on the same loop.

Its failures say exactly where they happened, because that decides whether a
request may be tried on another replica (see ``proxy.py``):

    UpstreamError                 retryable: nothing of the answer was seen
    ├── ConnectFailed             refused, unreachable, or no connection in time
    ├── ResetBeforeHeaders        the connection died before the status line
    ├── BadResponse               the replica spoke something that is not HTTP/1.1
    ├── HeadersTimeout            no status line within the per-try timeout
    ├── Abandoned                 no status line yet, and the replica is known not to be answering
    └── BodyInterrupted           died (or went silent) after the headers: never retried

A connection taken from the idle pool may have been closed by the replica in
the meantime; if it dies before any byte of the answer, the request is sent
once more on a fresh connection, invisibly (that is not the replica failing).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

import httptools

HIGH_WATER: Final = 256 * 1024  # buffered answer bytes before reading from the replica pauses
LOW_WATER: Final = 64 * 1024
MAX_IDLE_PER_REPLICA: Final = 256


class UpstreamError(Exception):
    retryable = True


class ConnectFailed(UpstreamError):
    pass


class ResetBeforeHeaders(UpstreamError):
    pass


class BadResponse(UpstreamError):
    pass


class HeadersTimeout(UpstreamError):
    pass


class Abandoned(UpstreamError):
    """Given up before the headers: the caller's check said the replica will not answer (it is gone, or
    failing its health probes), so waiting out the per-try timeout would only make the client wait."""


class BodyInterrupted(UpstreamError):
    retryable = False


Key = tuple[str, int]
Alive = Callable[[], str | None]  # why the replica will not answer, or None while it may
CHECK_EVERY_S: Final = 1.0


class Response:
    """One answer: status and headers at once, then the body chunk by chunk (``read``)."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_paused", "_waiter", "buffered", "eof_ends_body",
                 "headers", "keep_alive", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.eof_ends_body = False
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may still be buffered here)."""
        return self._done

    def read_nowait(self) -> bytes | None:
        """The next buffered chunk, b"" at the end, or None if the next one has not arrived."""
        if self._chunks:
            chunk = self._chunks.popleft()
            self.buffered -= len(chunk)
            if self._paused and self.buffered <= LOW_WATER:
                self._paused = False
                self._conn.resume()
            return chunk
        if self._done:
            return b""
        if self._error is not None:
            raise self._error
        return None

    async def read(self, idle_timeout: float) -> bytes:
        """The next chunk of the body; b"" once it is complete. Raises ``BodyInterrupted``."""
        while True:
            chunk = self.read_nowait()
            if chunk is not None:
                return chunk
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(idle_timeout, _expire, waiter,
                                    BodyInterrupted(f"the replica sent nothing for {idle_timeout:g} s"))
            try:
                await waiter
            except BodyInterrupted as exc:
                self._interrupt(exc)
                self._conn.abort()
                raise
            finally:
                timer.cancel()
                self._waiter = None

    def close(self) -> None:
        """Give the connection back (complete, reusable) or cut it (anything else: the replica sees it)."""
        conn = self._conn
        if conn.resp is not self:
            return
        conn.resp = None
        if self._done and self.keep_alive and self._error is None and not conn.lost:
            conn.idle()
        else:
            conn.abort()

    # fed by the connection
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        if not self._paused and self.buffered > HIGH_WATER:
            self._paused = True
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _interrupt(self, error: UpstreamError) -> None:
        if not self._done and self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


def _expire(fut: asyncio.Future[None], error: Exception) -> None:
    if not fut.done():
        fut.set_exception(error)


class _Checker:
    """Asks ``alive`` every ``CHECK_EVERY_S`` until cancelled; a reason fails ``waiter`` with ``Abandoned``."""

    __slots__ = ("_alive", "_handle", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None], alive: Alive) -> None:
        self._loop = loop
        self._waiter = waiter
        self._alive = alive
        self._handle = loop.call_later(CHECK_EVERY_S, self._check)

    def _check(self) -> None:
        if self._waiter.done():
            return
        why = self._alive()
        if why is not None:
            self._waiter.set_exception(Abandoned(f"given up waiting for its answer: {why}"))
        else:
            self._handle = self._loop.call_later(CHECK_EVERY_S, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class _Conn(asyncio.Protocol):
    """One keep-alive connection to one replica; carries one exchange at a time."""

    def __init__(self, pool: Pool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: Response | None = None
        self.headers_waiter: asyncio.Future[None] | None = None
        self.got_bytes = False
        self.headers_done = False
        self.lost = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.resp is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"the replica's answer is not valid HTTP/1.1: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        resp = self.resp
        if resp is None:
            return
        if self.headers_done and resp.eof_ends_body:
            resp._finish()
        elif self.headers_done:
            resp._interrupt(BodyInterrupted("the replica closed the connection mid-answer"))
        else:
            self._fail(ResetBeforeHeaders("the replica closed the connection before answering"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.resp is not None
        self.resp.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        self.headers_done = True
        resp.status = self.parser.get_status_code()
        resp.keep_alive = self.parser.should_keep_alive()
        framed = any(n in (b"content-length", b"transfer-encoding") for n, _ in resp.headers)
        resp.eof_ends_body = not framed and resp.status not in (204, 304)
        w = self.headers_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.resp is not None
        self.resp._feed(body)

    def on_message_complete(self) -> None:
        if self.resp is not None:
            self.resp._finish()

    # used by Pool and Response
    def start(self, data: bytes) -> Response:
        assert self.transport is not None
        self.resp = Response(self)
        self.got_bytes = False
        self.headers_done = False
        self.transport.write(data)
        return self.resp

    def _fail(self, error: UpstreamError) -> None:
        w = self.headers_waiter
        if w is not None and not w.done():
            w.set_exception(error)
        elif self.resp is not None:
            self.resp._interrupt(error if self.headers_done else BodyInterrupted(str(error)))

    def pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def idle(self) -> None:
        self.headers_waiter = None
        self.pool.put_idle(self)

    def abort(self) -> None:
        self.lost = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections per replica address; ``request`` sends one request on one of them."""

    def __init__(self, connect_timeout_s: float = 2.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[Key, list[_Conn]] = {}

    def put_idle(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_REPLICA or conn.lost:
            conn.abort()
        else:
            idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def _connect(self, key: Key, timeout: float) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self, key), key[0], key[1]), timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to the replica: {exc or type(exc).__name__}") from None
        return proto

    async def request(self, key: Key, data: bytes, timeout_s: float, alive: Alive | None = None) -> Response:
        """Send ``data`` (a whole HTTP/1.1 request) and wait at most ``timeout_s`` for the headers.

        While it waits, ``alive`` is asked every ``CHECK_EVERY_S``; a reason from it ends the wait at
        once with ``Abandoned`` (the connection is cut, which the replica sees as its client leaving).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for _ in range(2):
            idle = self._idle.get(key)
            reused = bool(idle)
            conn = idle.pop() if idle else await self._connect(key, min(self.connect_timeout_s, timeout_s))
            resp = conn.start(data)
            waiter = conn.headers_waiter = loop.create_future()
            timer = loop.call_later(max(0.0, deadline - loop.time()), _expire, waiter,
                                    HeadersTimeout(f"the replica did not answer within {timeout_s:g} s"))
            checker = None if alive is None else _Checker(loop, waiter, alive)
            try:
                await waiter
            except ResetBeforeHeaders:
                conn.resp = None
                conn.abort()
                if reused and not conn.got_bytes and loop.time() < deadline:
                    continue  # a stale keep-alive connection: try once on a fresh one
                raise
            except BaseException:
                conn.resp = None
                conn.abort()
                raise
            finally:
                timer.cancel()
                if checker is not None:
                    checker.cancel()
                conn.headers_waiter = None
            return resp
        raise ResetBeforeHeaders("the replica closed the connection before answering")

    def close(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.abort()
        self._idle.clear()
