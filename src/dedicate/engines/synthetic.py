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
standard library, starlette, uvicorn and prometheus-client (never torch,
transformers, FastAPI or pydantic), plus the light modules it shares with the
transformers server: ``protocol`` (the HTTP side) and ``serving`` (the process).

It is never chosen by default: a hardware class or a test names it explicitly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dedicate.engines.protocol import APIError as APIError
from dedicate.engines.protocol import (
    BodyRenderer,
    EventRenderer,
    EventStream,
    Reply,
    authorizer,
    bad_request,
    body_response,
    chat_body,
    chat_events,
    check_framing,
    collect,
    completion_body,
    completion_events,
    content_part_text,
    event_stream,
    exception_handlers,
    health_response,
    json_object,
    metrics_response,
    model_not_ready,
    models_response,
    refuse_chat_options,
    refuse_completion_options,
    reply_budget,
    server_error,
    shutting_down,
    single_prompt,
)
from dedicate.engines.protocol import Delta as Delta
from dedicate.engines.protocol import FinishReason as FinishReason
from dedicate.engines.protocol import error_envelope as error_envelope
from dedicate.engines.protocol import render_metrics as render_engine_metrics
from dedicate.engines.serving import TOKEN_ENV as TOKEN_ENV
from dedicate.engines.serving import (
    add_process_arguments,
    configure_logging,
    int_at_least,
    listen,
    non_negative_float,
    positive_float,
    read_token,
    replica_server,
    serve,
)
from dedicate.engines.serving import bind_socket as bind_socket
from dedicate.engines.serving import write_port_file as write_port_file

DEFAULT_MAX_TOKENS: Final = 16
FAIL_AFTER_START_S: Final = 1.0
FAIL_AFTER_START_EXIT: Final = 3

log = logging.getLogger("dedicate.engines.synthetic")


# ------------------------------------------------------------------- request bodies
#
# Types are checked by hand, with the same rules as the transformers server's
# strict pydantic models (a string where a number belongs is a 400; unknown
# fields are ignored): pydantic alone would double the start-up time. The
# checks past the types are ``protocol``'s, shared with that server.

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
    check_framing(n, stream, options is not None)
    return max_tokens, stream, include_usage


def parse_chat(raw: bytes) -> ParsedRequest:
    """A ``/v1/chat/completions`` body; every failure is a 400 envelope."""
    fields = _Fields(json_object(raw))
    messages = fields.required("messages")
    if not isinstance(messages, list):
        raise fields.bad("messages", "Input should be a valid list")
    if not messages:
        raise fields.bad("messages", "List should have at least 1 item after validation, not 0")
    texts = tuple(_message_text(message, index) for index, message in enumerate(messages))
    max_tokens, stream, include_usage = _sampling(fields)
    max_completion_tokens = fields.integer("max_completion_tokens", minimum=1)
    refuse_chat_options(fields.boolean("logprobs", False, nullable=True))
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
        parts.append(content_part_text(kind, part_fields.string("text"), index))
    return "".join(parts)


def parse_completion(raw: bytes) -> ParsedRequest:
    """A ``/v1/completions`` body; every failure is a 400 envelope."""
    fields = _Fields(json_object(raw))
    prompt = fields.required("prompt")
    if isinstance(prompt, list) and all(isinstance(item, str) for item in prompt):
        prompt = single_prompt(prompt)
    if not isinstance(prompt, str):
        raise fields.bad("prompt", "Input should be a valid string or a list of strings")
    max_tokens, stream, include_usage = _sampling(fields)
    echo = fields.boolean("echo", False)
    logprobs = fields.integer("logprobs")
    suffix = fields.string("suffix")
    refuse_completion_options(echo, logprobs, suffix)
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
            raise server_error(503, "the replica's queue is full; retry later", "engine_overloaded")
        ticket = Ticket(asyncio.get_running_loop().create_future())
        self.queue.append(ticket)
        return ticket

    async def wait(self, ticket: Ticket) -> None:
        """Until the ticket holds a slot; raises what ``fail_waiting`` set."""
        if ticket.future is not None and ticket.state == _WAITING:
            await ticket.future
        if ticket.state != _RUNNING:
            raise shutting_down()

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
        self.admission.fail_waiting(shutting_down())
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
            raise shutting_down()
        if not self.loaded:
            raise model_not_ready()

    # -- requests

    def max_tokens(self, requested: int | None, prompt_tokens: int, param: str) -> int:
        """Cap the reply at what is left of the context; refuse prompts that fill it."""
        return reply_budget(requested, DEFAULT_MAX_TOKENS, prompt_tokens, self.config.max_model_len, param)

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
            raise shutting_down()


# ----------------------------------------------------------------- answering


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(
    engine: SyntheticEngine,
    request: Request,
    ticket: Ticket,
    max_tokens: int,
    reply: Reply,
    render: BodyRenderer,
) -> Response:
    """One non-streamed request, abandoned (and its slot freed) if the client leaves."""
    deltas = engine.generate(ticket, max_tokens)
    work = asyncio.ensure_future(collect(deltas))
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
    return body_response(reply, work.result(), render)  # re-raises an APIError (shutting down) as its 503


def render_metrics(engine: SyntheticEngine) -> str:
    """Prometheus text exposition (format 0.0.4), with the transformers server's names."""
    return render_engine_metrics(
        running=engine.admission.running,
        waiting=engine.admission.waiting,
        requests_total=engine.metrics.requests_total,
        prompt_tokens_total=engine.metrics.prompt_tokens_total,
        generation_tokens_total=engine.metrics.generation_tokens_total,
        max_concurrency=engine.max_concurrency,
        loaded=engine.loaded,
        requests_rejected_total=engine.metrics.requests_rejected_total,
    )


# ------------------------------------------------------------------------ the app

Handler = Callable[[Request], Awaitable[Response]]


def _protected(token: str, handler: Handler) -> Handler:
    authorize = authorizer(token)

    async def authorized(request: Request) -> Response:
        authorize(request)
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
        return health_response(engine.loaded)

    async def metrics(_request: Request) -> Response:
        return metrics_response(render_metrics(engine))

    async def models(_request: Request) -> Response:
        return models_response(engine.served_model_name, engine.config.max_model_len)

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
        reply = Reply.new(prefix, engine.served_model_name, prompt_tokens, parsed.include_usage)
        ticket = engine.admit(prompt_tokens)
        if parsed.stream:
            stream = event_stream(engine.generate(ticket, max_tokens), reply, events, log)
            return EventStream(stream, lambda: engine.admission.leave(ticket))
        return await _respond(engine, request, ticket, max_tokens, reply, body)

    async def chat_completions(request: Request) -> Response:
        parsed = parse_chat(await request.body())
        prompt_tokens = chat_prompt_tokens(parsed.texts)
        return await answer(request, parsed, prompt_tokens, "messages", "chatcmpl", chat_events, chat_body)

    async def completions(request: Request) -> Response:
        parsed = parse_completion(await request.body())
        prompt_tokens = completion_prompt_tokens(parsed.texts[0])
        return await answer(request, parsed, prompt_tokens, "prompt", "cmpl", completion_events, completion_body)

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
        exception_handlers=exception_handlers(log),
        lifespan=lifespan,
    )


# --------------------------------------------------------------------- the process


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
    add_process_arguments(parser)
    parser.add_argument("--startup-delay", type=non_negative_float, default=0.0, help="seconds /health stays 503")
    parser.add_argument("--ttft", type=non_negative_float, default=0.1, help="seconds from a slot to the 1st token")
    parser.add_argument("--tokens-per-s", type=positive_float, default=25.0, help="tokens a second, per stream")
    parser.add_argument("--max-streams", type=int_at_least(1), default=16, help="requests generating at once")
    parser.add_argument("--max-queue", type=int_at_least(0), default=1000, help="waiting requests before 503s")
    parser.add_argument("--max-model-len", type=int_at_least(1), default=32768, help="the context length reported")
    parser.add_argument(
        "--shutdown-timeout", type=non_negative_float, default=5.0, help="seconds in-flight requests get after SIGTERM"
    )
    parser.add_argument(
        "--fail-after-start",
        action="store_true",
        help=f"never become healthy; exit {FAIL_AFTER_START_EXIT} after {FAIL_AFTER_START_S:g}s",
    )
    return parser.parse_args(argv)


def _failing_after(server: uvicorn.Server, delay_s: float, failed: list[bool]) -> Callable[[], None]:
    """For ``--fail-after-start``: once serving, stop by ourselves ``delay_s`` later, noting it in ``failed``."""

    def fail() -> None:
        if not server.should_exit:
            log.error("--fail-after-start: giving up without becoming healthy")
            failed.append(True)
            server.should_exit = True

    def arm() -> None:
        asyncio.get_running_loop().call_later(delay_s, fail)

    return arm


def main(argv: Sequence[str] | None = None) -> int:
    """Run one synthetic replica until SIGTERM; exit 0 then (3 with --fail-after-start)."""
    started_at = time.monotonic()
    args = _parse_args(argv)
    configure_logging(args.replica_id, args.instance)
    token = read_token(log)
    if not token:
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
    sock = listen(args.host, args.port, log, backlog=1024)
    if sock is None:
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
    server = replica_server(build_app(engine, token), engine, args.shutdown_timeout, log)
    failed: list[bool] = []
    on_started = None
    if args.fail_after_start:
        delay_s = max(0.0, FAIL_AFTER_START_S - (time.monotonic() - started_at))
        on_started = _failing_after(server, delay_s, failed)
    asyncio.run(serve(server, sock, args.port_file, log, on_started))
    return FAIL_AFTER_START_EXIT if failed else 0


if __name__ == "__main__":
    sys.exit(main())
