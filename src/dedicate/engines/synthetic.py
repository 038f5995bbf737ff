"""The synthetic engine's replica: its HTTP app and its process (``python -m dedicate.engines.synthetic``).

A model-less engine that speaks the replica protocol, for tests and load
tests. It serves exactly what ``transformers_server`` serves (OpenAI-compatible
``/v1/chat/completions`` and ``/v1/completions``, streamed or not,
``/v1/models``, ``/health`` and the same Prometheus ``/metrics``), behind the
same bearer token from ``DEDICATE_REPLICA_TOKEN``, but it has no model: the
fake model (made-up tokens on a timer, stream slots and a queue) is
``synthetic_engine``'s, and its request bodies are ``synthetic_requests``'.

The process starts in a fraction of a second: it imports only the standard
library, starlette, uvicorn and prometheus-client (never torch, transformers,
FastAPI or pydantic), plus the light modules it shares with the transformers
server: ``protocol`` (the HTTP side) and ``serving`` (the process).

It is never chosen by default: a hardware class or a test names it explicitly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dedicate.engines.protocol import (
    BodyRenderer,
    EventRenderer,
    EventStream,
    Reply,
    authorizer,
    body_response,
    chat_body,
    chat_events,
    collect,
    completion_body,
    completion_events,
    event_stream,
    exception_handlers,
    health_response,
    metrics_response,
    models_response,
)
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
from dedicate.engines.synthetic_engine import SyntheticConfig, SyntheticEngine, Ticket
from dedicate.engines.synthetic_requests import (
    ParsedRequest,
    chat_prompt_tokens,
    completion_prompt_tokens,
    parse_chat,
    parse_completion,
)

FAIL_AFTER_START_S: Final = 1.0
FAIL_AFTER_START_EXIT: Final = 3

log = logging.getLogger("dedicate.engines.synthetic")


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
