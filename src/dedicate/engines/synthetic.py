"""A model-less engine that speaks the replica protocol: for tests and load tests.

It serves exactly what ``transformers_server`` serves (OpenAI-compatible
``/v1/chat/completions`` and ``/v1/completions``, streamed or not,
``/v1/models``, ``/health`` and the same Prometheus ``/metrics``), behind the
same bearer token from ``DEDICATE_REPLICA_TOKEN``, but it has no model: each
reply is ``max_tokens`` made-up tokens ("tok1 tok2 ...") produced on a timer.
The first token comes ``--ttft`` seconds after a request gets a stream slot,
then one every ``1 / --tokens-per-s`` seconds. At most ``--max-streams``
requests generate at once (a real engine's batch); the rest wait in a FIFO
queue of at most ``--max-queue``, beyond which requests get a 503.

Every wait is an asyncio timer, so hundreds of concurrent streams cost almost
no CPU, and the process starts in a fraction of a second: it imports only the
standard library, starlette and uvicorn (never torch, transformers, FastAPI or
pydantic, and no other dedicate module).

It is never chosen by default: a hardware class or a test names it explicitly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import signal
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_ENV: Final = "DEDICATE_REPLICA_TOKEN"
DEFAULT_MAX_TOKENS: Final = 16
FAIL_AFTER_START_S: Final = 1.0
FAIL_AFTER_START_EXIT: Final = 3

log = logging.getLogger("dedicate.engines.synthetic")

FinishReason = Literal["stop", "length"]


# --------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error the client should see, rendered as OpenAI's error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(
            error_envelope(self.message, self.type, self.param, self.code),
            status_code=self.status,
            headers=headers,
        )


def error_envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _server_error(status: int, message: str, code: str) -> APIError:
    return APIError(status, message, type_="server_error", code=code)


def _shutting_down() -> APIError:
    return _server_error(503, "the replica is shutting down", "shutting_down")


# ------------------------------------------------------------------- request bodies
#
# Validation by hand, with the same rules as the transformers server's strict
# pydantic models (a string where a number belongs is a 400; unknown fields
# are ignored): pydantic alone would double the start-up time.

_MISSING: Final = object()


class _Fields:
    """Typed reads of one JSON object, each failure a 400 naming the field."""

    def __init__(self, data: dict[str, Any], prefix: str = "") -> None:
        self._data = data
        self._prefix = prefix

    def param(self, name: str | int) -> str:
        return f"{self._prefix}{name}"

    def bad(self, name: str | int, message: str) -> APIError:
        param = self.param(name)
        return bad_request(f"{param}: {message}", param)

    def raw(self, name: str) -> Any:
        return self._data.get(name, _MISSING)

    def required(self, name: str) -> Any:
        value = self.raw(name)
        if value is _MISSING:
            raise self.bad(name, "Field required")
        return value

    def boolean(self, name: str, default: bool, *, nullable: bool = False) -> bool:
        value = self.raw(name)
        if value is _MISSING or (nullable and value is None):
            return default
        if not isinstance(value, bool):
            raise self.bad(name, "Input should be a valid boolean")
        return value

    def integer(self, name: str, *, minimum: int | None = None, nullable: bool = True) -> int | None:
        value = self.raw(name)
        if value is _MISSING or (nullable and value is None):
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.bad(name, "Input should be a valid integer")
        if minimum is not None and value < minimum:
            raise self.bad(name, f"Input should be greater than or equal to {minimum}")
        return value

    def number(self, name: str, low: float, high: float, *, low_open: bool = False) -> None:
        """A float in a range (ints are floats too); checked, then ignored by this engine."""
        value = self.raw(name)
        if value is _MISSING:
            return
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.bad(name, "Input should be a valid number")
        if value < low or (low_open and value == low) or value > high:
            bound = "greater than" if low_open else "at least"
            raise self.bad(name, f"Input should be {bound} {low} and at most {high}")

    def string(self, name: str, *, nullable: bool = True) -> str | None:
        value = self.raw(name)
        if value is _MISSING or (nullable and value is None):
            return None
        if not isinstance(value, str):
            raise self.bad(name, "Input should be a valid string")
        return value

    def obj(self, name: str) -> _Fields | None:
        value = self.raw(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, dict):
            raise self.bad(name, "Input should be a valid dictionary")
        return _Fields(value, f"{self.param(name)}.")


@dataclass(frozen=True)
class ParsedRequest:
    """What this engine needs from a request body: prompt text, length and framing."""

    texts: tuple[str, ...]  # chat: each message's text; completions: the prompt
    max_tokens: int | None
    stream: bool
    include_usage: bool


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    return data


def _sampling(fields: _Fields) -> tuple[int | None, bool, bool]:
    """The options shared by both endpoints: (max_tokens, stream, include_usage)."""
    fields.string("model")
    max_tokens = fields.integer("max_tokens", minimum=1)
    fields.number("temperature", 0.0, 2.0)
    fields.number("top_p", 0.0, 1.0, low_open=True)
    fields.integer("seed")
    stop = fields.raw("stop")
    if not (stop is _MISSING or stop is None or isinstance(stop, str)):
        if not isinstance(stop, list):
            raise fields.bad("stop", "Input should be a string or a list of strings")
        for index, item in enumerate(stop):
            if not isinstance(item, str):
                raise fields.bad(f"stop.{index}", "Input should be a valid string")
    n = fields.integer("n", nullable=False)
    stream = fields.boolean("stream", False)
    options = fields.obj("stream_options")
    include_usage = options.boolean("include_usage", False) if options is not None else False
    if n is not None and n != 1:
        raise bad_request("only n=1 is supported", "n")
    if options is not None and not stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    return max_tokens, stream, include_usage


def parse_chat(raw: bytes) -> ParsedRequest:
    """A ``/v1/chat/completions`` body; every failure is a 400 envelope."""
    fields = _Fields(_json_object(raw))
    messages = fields.required("messages")
    if not isinstance(messages, list):
        raise fields.bad("messages", "Input should be a valid list")
    if not messages:
        raise fields.bad("messages", "List should have at least 1 item after validation, not 0")
    texts = tuple(_message_text(message, index) for index, message in enumerate(messages))
    max_tokens, stream, include_usage = _sampling(fields)
    max_completion_tokens = fields.integer("max_completion_tokens", minimum=1)
    if fields.boolean("logprobs", False, nullable=True):
        raise bad_request("logprobs are not supported by this server", "logprobs")
    return ParsedRequest(texts, max_completion_tokens or max_tokens, stream, include_usage)


def _message_text(message: Any, index: int) -> str:
    if not isinstance(message, dict):
        raise bad_request(f"messages.{index}: Input should be a valid dictionary", f"messages.{index}")
    fields = _Fields(message, f"messages.{index}.")
    if not isinstance(fields.required("role"), str):
        raise fields.bad("role", "Input should be a valid string")
    content = fields.raw("content")
    if content is _MISSING or content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise fields.bad("content", "Input should be a valid string or a list of content parts")
    parts: list[str] = []
    for position, part in enumerate(content):
        param = f"messages.{index}.content"
        if not isinstance(part, dict):
            raise bad_request(f"{param}.{position}: Input should be a valid dictionary", f"{param}.{position}")
        part_fields = _Fields(part, f"{param}.{position}.")
        kind = part_fields.required("type")
        if not isinstance(kind, str):
            raise part_fields.bad("type", "Input should be a valid string")
        text = part_fields.string("text")
        if kind != "text" or text is None:
            raise bad_request(f"only text content parts are supported, got {kind!r}", param)
        parts.append(text)
    return "".join(parts)


def parse_completion(raw: bytes) -> ParsedRequest:
    """A ``/v1/completions`` body; every failure is a 400 envelope."""
    fields = _Fields(_json_object(raw))
    prompt = fields.required("prompt")
    if isinstance(prompt, list) and all(isinstance(item, str) for item in prompt):
        if len(prompt) != 1:
            raise bad_request("prompt must be a string or a list holding one string", "prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise fields.bad("prompt", "Input should be a valid string or a list of strings")
    max_tokens, stream, include_usage = _sampling(fields)
    echo = fields.boolean("echo", False)
    logprobs = fields.integer("logprobs")
    suffix = fields.string("suffix")
    for name, used in (("echo", echo), ("logprobs", logprobs is not None), ("suffix", bool(suffix))):
        if used:
            raise bad_request(f"{name} is not supported by this server", name)
    return ParsedRequest((prompt,), max_tokens, stream, include_usage)


def count_tokens(text: str) -> int:
    """This engine's stand-in tokenizer: about four characters a token."""
    return math.ceil(len(text) / 4)


def chat_prompt_tokens(texts: Sequence[str]) -> int:
    """Each message's text plus four tokens of chat-template framing."""
    return sum(count_tokens(text) + 4 for text in texts)


def completion_prompt_tokens(prompt: str) -> int:
    return max(1, count_tokens(prompt))


# -------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class Delta:
    """A piece of a reply. The last one of a request carries ``finish_reason``."""

    text: str
    finish_reason: FinishReason | None
    completion_tokens: int


@dataclass
class EngineMetrics:
    """Counters read by /metrics; touched only from the event loop, so no locks."""

    requests_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_rejected_total: int = 0


@dataclass(frozen=True)
class SyntheticConfig:
    """How the fake model behaves."""

    served_model_name: str
    startup_delay_s: float = 0.0
    ttft_s: float = 0.1
    tokens_per_s: float = 25.0
    max_streams: int = 16
    max_queue: int = 1000
    max_model_len: int = 32768
    fail_after_start: bool = False

    def __post_init__(self) -> None:
        if self.startup_delay_s < 0 or self.ttft_s < 0:
            raise ValueError("startup_delay_s and ttft_s must not be negative")
        if not self.tokens_per_s > 0:
            raise ValueError("tokens_per_s must be positive")
        if self.max_streams < 1 or self.max_queue < 0 or self.max_model_len < 1:
            raise ValueError("max_streams and max_model_len must be at least 1, max_queue at least 0")


_WAITING: Final = "waiting"
_RUNNING: Final = "running"
_DONE: Final = "done"


@dataclass(eq=False)
class Ticket:
    """One request's place: in the queue, in a stream slot, or finished."""

    future: asyncio.Future[None] | None = None
    state: str = _WAITING


@dataclass
class Admission:
    """A FIFO queue in front of ``max_streams`` slots.

    Places are taken synchronously (``enter``), so whether a request is
    refused for overload is decided before any response starts; ``leave``
    is idempotent and safe from ``finally`` blocks and cancelled tasks.
    """

    max_streams: int
    max_queue: int
    running: int = 0
    queue: deque[Ticket] = field(default_factory=deque)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def enter(self) -> Ticket:
        if self.running < self.max_streams and not self.queue:
            self.running += 1
            return Ticket(state=_RUNNING)
        if len(self.queue) >= self.max_queue:
            raise _server_error(503, "the replica's queue is full; retry later", "engine_overloaded")
        ticket = Ticket(asyncio.get_running_loop().create_future())
        self.queue.append(ticket)
        return ticket

    async def wait(self, ticket: Ticket) -> None:
        """Until the ticket holds a slot; raises what ``fail_waiting`` set."""
        if ticket.future is not None and ticket.state == _WAITING:
            await ticket.future
        if ticket.state != _RUNNING:
            raise _shutting_down()

    def leave(self, ticket: Ticket) -> None:
        if ticket.state == _RUNNING:
            self.running -= 1
        elif ticket.state == _WAITING:
            with contextlib.suppress(ValueError):
                self.queue.remove(ticket)
            if ticket.future is not None and not ticket.future.done():
                ticket.future.cancel()
        ticket.state = _DONE
        self._fill()

    def fail_waiting(self, error: APIError) -> None:
        """Refuse everything still queued (the replica is shutting down)."""
        while self.queue:
            ticket = self.queue.popleft()
            ticket.state = _DONE
            if ticket.future is not None and not ticket.future.done():
                ticket.future.set_exception(error)

    def _fill(self) -> None:
        while self.running < self.max_streams and self.queue:
            ticket = self.queue.popleft()
            if ticket.future is None or ticket.future.done():
                continue  # its task was cancelled; it cleans up after itself
            ticket.state = _RUNNING
            self.running += 1
            ticket.future.set_result(None)


class SyntheticEngine:
    """Timers that pretend to be a model, plus the admission queue and counters."""

    def __init__(self, config: SyntheticConfig, *, started_at: float | None = None) -> None:
        self.config = config
        self.served_model_name = config.served_model_name
        self.max_concurrency = config.max_streams
        self.metrics = EngineMetrics()
        self.admission = Admission(config.max_streams, config.max_queue)
        self.started_at = time.monotonic() if started_at is None else started_at
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._abort: asyncio.Future[None] | None = None

    # -- lifecycle

    @property
    def loaded(self) -> bool:
        """Healthy: the start-up delay is over (and never, with ``fail_after_start``)."""
        if self.config.fail_after_start:
            return False
        return time.monotonic() - self.started_at >= self.config.startup_delay_s

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the serving loop, so a signal handler can reach it."""
        self._loop = loop

    def drain(self, grace_s: float) -> None:
        """Begin shutting down: refuse new work, end running work after ``grace_s``.

        Safe to call from a signal handler: the work is handed to the loop.
        """
        if self.draining:
            return
        self.draining = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._begin_draining, grace_s)

    def _begin_draining(self, grace_s: float) -> None:
        self.admission.fail_waiting(_shutting_down())
        asyncio.get_running_loop().call_later(grace_s, self._abort_running)

    def _abort_running(self) -> None:
        abort = self._abort_future()
        if not abort.done():
            abort.set_result(None)

    def _abort_future(self) -> asyncio.Future[None]:
        """Set once running requests must end. One per loop: test clients bring their own."""
        loop = asyncio.get_running_loop()
        if self._abort is None or self._abort.get_loop() is not loop:
            self._abort = loop.create_future()
        return self._abort

    def check_ready(self) -> None:
        if self.draining:
            raise _shutting_down()
        if not self.loaded:
            raise _server_error(503, "the model is still loading", "model_not_ready")

    # -- requests

    def max_tokens(self, requested: int | None, prompt_tokens: int, param: str) -> int:
        """Cap the reply at what is left of the context; refuse prompts that fill it."""
        room = self.config.max_model_len - prompt_tokens
        if room <= 0:
            raise bad_request(
                f"prompt has {prompt_tokens} tokens; this model's context is {self.config.max_model_len} tokens",
                param,
                "context_length_exceeded",
            )
        return min(requested or DEFAULT_MAX_TOKENS, room)

    def admit(self, prompt_tokens: int) -> Ticket:
        """Take a place in line now; a 503 if the queue is full or we are draining."""
        self.check_ready()
        try:
            ticket = self.admission.enter()
        except APIError:
            self.metrics.requests_rejected_total += 1
            raise
        self.metrics.requests_total += 1
        self.metrics.prompt_tokens_total += prompt_tokens
        return ticket

    async def generate(self, ticket: Ticket, max_tokens: int) -> AsyncGenerator[Delta]:
        """Wait for a slot, then yield ``max_tokens`` tokens on schedule, then the finish.

        Closing or cancelling the iterator frees the slot at once. Raises a 503
        ``APIError`` when the replica is shutting down and the grace is over.
        """
        try:
            await self.admission.wait(ticket)
            loop = asyncio.get_running_loop()
            first = loop.time() + self.config.ttft_s
            interval = 1.0 / self.config.tokens_per_s
            for produced in range(1, max_tokens + 1):
                await self._pause_until(first + (produced - 1) * interval)
                self.metrics.generation_tokens_total += 1
                yield Delta(f"tok{produced}" if produced == 1 else f" tok{produced}", None, produced)
            yield Delta("", "length", max_tokens)
        finally:
            self.admission.leave(ticket)

    async def _pause_until(self, due: float) -> None:
        """Sleep until ``due`` (loop time), waking early only to abort."""
        loop = asyncio.get_running_loop()
        abort = self._abort_future()
        delay = due - loop.time()
        if delay > 0 and not abort.done():
            await asyncio.wait((abort,), timeout=delay)
        else:
            await asyncio.sleep(0)  # a very fast stream still lets the others run
        if abort.done():
            raise _shutting_down()


# ----------------------------------------------------------------- response shapes


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True)
class _Reply:
    """Identity shared by every chunk of one response."""

    id: str
    created: int
    model: str
    prompt_tokens: int
    include_usage: bool = False

    @classmethod
    def new(cls, prefix: str, model: str, prompt_tokens: int, include_usage: bool) -> _Reply:
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, prompt_tokens, include_usage)

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None  # OpenAI sends an explicit null on chunks when usage is on
        return body

    def usage_chunk(self, obj: str, completion_tokens: int) -> dict[str, Any]:
        body = self.envelope(obj, [])
        body["usage"] = _usage(self.prompt_tokens, completion_tokens)
        return body


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


EventRenderer = Callable[[_Reply, AsyncIterator[Delta]], AsyncIterator[str]]
BodyRenderer = Callable[[_Reply, str, FinishReason, int], dict[str, Any]]


async def _chat_events(reply: _Reply, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
    """chat.completion.chunk events: role first, then content, then the finish."""

    def chunk(delta: dict[str, str], finish: FinishReason | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse(reply.envelope("chat.completion.chunk", [choice]))

    role_sent = False
    completion_tokens = 0
    async for delta in deltas:
        if not role_sent:
            yield chunk({"role": "assistant", "content": ""})
            role_sent = True
        if delta.text:
            yield chunk({"content": delta.text})
        if delta.finish_reason is not None:
            yield chunk({}, delta.finish_reason)
        completion_tokens = delta.completion_tokens
    if reply.include_usage:
        yield _sse(reply.usage_chunk("chat.completion.chunk", completion_tokens))


async def _completion_events(reply: _Reply, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
    """text_completion events: one per token, then the finish."""

    def chunk(text: str, finish: FinishReason | None = None) -> str:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return _sse(reply.envelope("text_completion", [choice]))

    completion_tokens = 0
    async for delta in deltas:
        if delta.text and delta.finish_reason is None:
            yield chunk(delta.text)
        elif delta.finish_reason is not None:
            yield chunk(delta.text, delta.finish_reason)
        completion_tokens = delta.completion_tokens
    if reply.include_usage:
        yield _sse(reply.usage_chunk("text_completion", completion_tokens))


def _chat_body(reply: _Reply, text: str, finish: FinishReason, tokens: int) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    body = reply.envelope("chat.completion", [choice])
    body["usage"] = _usage(reply.prompt_tokens, tokens)
    return body


def _completion_body(reply: _Reply, text: str, finish: FinishReason, tokens: int) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body = reply.envelope("text_completion", [choice])
    body["usage"] = _usage(reply.prompt_tokens, tokens)
    return body


async def _stream(
    engine: SyntheticEngine, ticket: Ticket, max_tokens: int, reply: _Reply, render: EventRenderer
) -> AsyncGenerator[str]:
    """One streamed request, ended OpenAI-style; a failure becomes an error event."""
    async with contextlib.aclosing(engine.generate(ticket, max_tokens)) as deltas:
        try:
            async for event in render(reply, deltas):
                yield event
        except APIError as exc:
            yield _sse(error_envelope(exc.message, exc.type, exc.param, exc.code))
        except Exception:
            log.exception("generation failed mid-stream")
            yield _sse(error_envelope("generation failed", "server_error"))
    yield _sse("[DONE]")


class _EventStream(StreamingResponse):
    """An SSE response that always closes its events and frees its place in line.

    Starlette cancels the stream when the client disconnects; the explicit
    close also covers a stream that never started (its generator's own
    ``finally`` would not run then).
    """

    def __init__(self, events: AsyncGenerator[str], release: Callable[[], None]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = events
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            await self._events.aclose()


async def _collect(deltas: AsyncIterator[Delta]) -> tuple[str, FinishReason, int] | None:
    parts: list[str] = []
    async for delta in deltas:
        parts.append(delta.text)
        if delta.finish_reason is not None:
            return "".join(parts), delta.finish_reason, delta.completion_tokens
    return None


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(
    engine: SyntheticEngine,
    request: Request,
    ticket: Ticket,
    max_tokens: int,
    reply: _Reply,
    render: BodyRenderer,
) -> Response:
    """One non-streamed request, abandoned (and its slot freed) if the client leaves."""
    deltas = engine.generate(ticket, max_tokens)
    work = asyncio.ensure_future(_collect(deltas))
    gone = asyncio.ensure_future(_until_disconnected(request.receive))
    finished: set[asyncio.Future[Any]] = set()
    try:
        finished, _ = await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        engine.admission.leave(ticket)
        for task in (work, gone):
            task.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
        await deltas.aclose()
    if work not in finished:
        return Response(status_code=499)  # nobody is listening; nginx's "client closed"
    result = work.result()  # re-raises an APIError (shutting down) as its 503
    if result is None:
        return Response(status_code=499)
    text, finish, completion_tokens = result
    return JSONResponse(render(reply, text, finish, completion_tokens))


# ------------------------------------------------------------------------ metrics

_METRICS: Final = (
    ("dedicate_engine_requests_running", "gauge", "Requests generating right now."),
    ("dedicate_engine_requests_waiting", "gauge", "Requests queued for a generation slot."),
    ("dedicate_engine_requests_total", "counter", "Generation requests accepted."),
    ("dedicate_engine_prompt_tokens_total", "counter", "Prompt tokens of accepted requests."),
    ("dedicate_engine_generation_tokens_total", "counter", "Tokens generated."),
    ("dedicate_engine_max_concurrency", "gauge", "Requests allowed to generate at once."),
    ("dedicate_engine_model_loaded", "gauge", "1 once the model is loaded and serving."),
    ("dedicate_engine_requests_rejected_total", "counter", "Requests refused because the queue was full."),
)


def render_metrics(engine: SyntheticEngine) -> str:
    """Prometheus text exposition (format 0.0.4), with the transformers server's names."""
    values = (
        engine.admission.running,
        engine.admission.waiting,
        engine.metrics.requests_total,
        engine.metrics.prompt_tokens_total,
        engine.metrics.generation_tokens_total,
        engine.max_concurrency,
        int(engine.loaded),
        engine.metrics.requests_rejected_total,
    )
    lines: list[str] = []
    for (name, kind, help_), value in zip(_METRICS, values, strict=True):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ the app

Handler = Callable[[Request], Awaitable[Response]]


def _protected(token: str, handler: Handler) -> Handler:
    expected = f"Bearer {token}".encode()

    async def authorized(request: Request) -> Response:
        supplied = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            raise APIError(401, "missing or invalid bearer token", code="invalid_api_key")
        return await handler(request)

    return authorized


class _Tagged:
    """Marks every response ``x-synthetic-engine: 1``: nobody mistakes it for a model."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-synthetic-engine", b"1")]
            await send(message)

        await self.app(scope, receive, tagged)


def build_app(engine: SyntheticEngine, token: str) -> Starlette:
    """The ASGI app for one synthetic replica (usable in-process with any ASGI client)."""
    if not token:
        raise ValueError("a replica token is required")

    async def health(_request: Request) -> Response:
        if engine.loaded:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "loading"}, status_code=503)

    async def metrics(_request: Request) -> Response:
        return Response(render_metrics(engine), media_type="text/plain; version=0.0.4")

    async def models(_request: Request) -> Response:
        entry = {
            "id": engine.served_model_name,
            "object": "model",
            "created": 0,
            "owned_by": "dedicate",
            "max_model_len": engine.config.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def answer(
        request: Request,
        parsed: ParsedRequest,
        prompt_tokens: int,
        param: str,
        prefix: str,
        events: EventRenderer,
        body: BodyRenderer,
    ) -> Response:
        engine.check_ready()
        max_tokens = engine.max_tokens(parsed.max_tokens, prompt_tokens, param)
        reply = _Reply.new(prefix, engine.served_model_name, prompt_tokens, parsed.include_usage)
        ticket = engine.admit(prompt_tokens)
        if parsed.stream:
            stream = _stream(engine, ticket, max_tokens, reply, events)
            return _EventStream(stream, lambda: engine.admission.leave(ticket))
        return await _respond(engine, request, ticket, max_tokens, reply, body)

    async def chat_completions(request: Request) -> Response:
        parsed = parse_chat(await request.body())
        prompt_tokens = chat_prompt_tokens(parsed.texts)
        return await answer(request, parsed, prompt_tokens, "messages", "chatcmpl", _chat_events, _chat_body)

    async def completions(request: Request) -> Response:
        parsed = parse_completion(await request.body())
        prompt_tokens = completion_prompt_tokens(parsed.texts[0])
        return await answer(request, parsed, prompt_tokens, "prompt", "cmpl", _completion_events, _completion_body)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        engine.attach(asyncio.get_running_loop())
        yield

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", _protected(token, metrics), methods=["GET"]),
        Route("/v1/models", _protected(token, models), methods=["GET"]),
        Route("/v1/chat/completions", _protected(token, chat_completions), methods=["POST"]),
        Route("/v1/completions", _protected(token, completions), methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Tagged)],
        exception_handlers={
            APIError: _on_api_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        lifespan=lifespan,
    )


async def _on_api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    return APIError(exc.status_code, str(exc.detail), code=code).response()


async def _on_unexpected(_request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return APIError(500, "internal server error", type_="server_error").response()


# --------------------------------------------------------------------- the process


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dedicate.engines.synthetic",
        description=(
            "Synthetic replica for tests and load tests: the replica protocol with made-up tokens at a set speed, "
            f"no model. The bearer token is read from ${TOKEN_ENV}."
        ),
    )
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--model-dir", type=Path, help="accepted and ignored: there are no weights")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--replica-id", default="", help="label for logs and process lookup")
    parser.add_argument("--instance", default="", help="label for logs and process lookup")
    parser.add_argument("--startup-delay", type=_non_negative_float, default=0.0, help="seconds /health stays 503")
    parser.add_argument("--ttft", type=_non_negative_float, default=0.1, help="seconds from a slot to the 1st token")
    parser.add_argument("--tokens-per-s", type=_positive_float, default=25.0, help="tokens a second, per stream")
    parser.add_argument("--max-streams", type=_int_at_least(1), default=16, help="requests generating at once")
    parser.add_argument("--max-queue", type=_int_at_least(0), default=1000, help="waiting requests before 503s")
    parser.add_argument("--max-model-len", type=_int_at_least(1), default=32768, help="the context length reported")
    parser.add_argument(
        "--shutdown-timeout", type=_non_negative_float, default=5.0, help="seconds in-flight requests get after SIGTERM"
    )
    parser.add_argument(
        "--fail-after-start",
        action="store_true",
        help=f"never become healthy; exit {FAIL_AFTER_START_EXIT} after {FAIL_AFTER_START_S:g}s",
    )
    return parser.parse_args(argv)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind ourselves so port 0 works and we learn the real port before serving."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def write_port_file(path: Path, port: int) -> None:
    """Write-then-rename, so a reader polling the file never sees a partial number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n")
    os.replace(temporary, path)


async def _serve(server: uvicorn.Server, sock: socket.socket, port_file: Path | None, fail_after: float | None) -> bool:
    """Serve until told to stop; announce the port once uvicorn is accepting.

    With ``fail_after``, stop by ourselves that many seconds later; True if that happened.
    """
    failed: list[bool] = []
    port = int(sock.getsockname()[1])
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.005)
    if server.started:
        log.info("listening on %s:%d", sock.getsockname()[0], port)
        if port_file is not None:
            write_port_file(port_file, port)
        if fail_after is not None:

            def fail() -> None:
                if not server.should_exit:
                    log.error("--fail-after-start: giving up without becoming healthy")
                    failed.append(True)
                    server.should_exit = True

            asyncio.get_running_loop().call_later(fail_after, fail)
    await serving
    return bool(failed)


class _ReplicaServer(uvicorn.Server):
    """uvicorn, plus draining the engine when a shutdown signal arrives.

    uvicorn alone would wait for streams and then cancel them mid-body after
    its timeout; draining the engine first ends them as well-formed replies.
    """

    def __init__(self, config: uvicorn.Config, engine: SyntheticEngine, grace_s: float) -> None:
        super().__init__(config)
        self._engine = engine
        self._grace_s = grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("%s: shutting down, in-flight requests get %ss", signal.Signals(sig).name, self._grace_s)
        self._engine.drain(self._grace_s)
        super().handle_exit(sig, frame)


def _signal_handler(server: uvicorn.Server) -> Callable[[int, FrameType | None], None]:
    """The handler outside uvicorn's own: an early SIGTERM counts, a late one exits 0."""

    def handle(signum: int, frame: FrameType | None) -> None:
        server.handle_exit(signum, frame)

    return handle


class _QuietPolling(logging.Filter):
    """Drop access-log lines for successful health and metrics polls."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:  # uvicorn: client, method, path, ver, status
            _client, method, path, _version, status = args
            return not (method == "GET" and path in ("/health", "/metrics") and status == 200)
        return True


def _configure_logging(args: argparse.Namespace) -> None:
    labels = " ".join(
        f"{key}={value}" for key, value in (("replica", args.replica_id), ("instance", args.instance)) if value
    )
    prefix = f"[{labels}] " if labels else ""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
    )
    logging.getLogger("uvicorn.access").addFilter(_QuietPolling())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one synthetic replica until SIGTERM; exit 0 then (3 with --fail-after-start)."""
    started_at = time.monotonic()
    args = _parse_args(argv)
    _configure_logging(args)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        log.error("%s is not set; refusing to serve without authentication", TOKEN_ENV)
        return 2
    config = SyntheticConfig(
        served_model_name=args.served_model_name,
        startup_delay_s=args.startup_delay,
        ttft_s=args.ttft,
        tokens_per_s=args.tokens_per_s,
        max_streams=args.max_streams,
        max_queue=args.max_queue,
        max_model_len=args.max_model_len,
        fail_after_start=args.fail_after_start,
    )
    engine = SyntheticEngine(config, started_at=started_at)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    log.info(
        "synthetic engine for %s: ttft %gs, %g tokens/s, %d streams, queue %d, healthy after %gs",
        config.served_model_name,
        config.ttft_s,
        config.tokens_per_s,
        config.max_streams,
        config.max_queue,
        config.startup_delay_s,
    )
    uv_config = uvicorn.Config(
        build_app(engine, token),
        log_config=None,
        timeout_graceful_shutdown=math.ceil(args.shutdown_timeout) + 2,  # a backstop behind the engine's deadline
        lifespan="on",
    )
    server = _ReplicaServer(uv_config, engine, grace_s=args.shutdown_timeout)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _signal_handler(server))
    fail_after = max(0.0, FAIL_AFTER_START_S - (time.monotonic() - started_at)) if args.fail_after_start else None
    failed = asyncio.run(_serve(server, sock, args.port_file, fail_after))
    return FAIL_AFTER_START_EXIT if failed else 0


if __name__ == "__main__":
    sys.exit(main())
