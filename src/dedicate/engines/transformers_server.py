"""dedicate's own OpenAI-compatible model server for one replica: its HTTP app and its process.

The runtime starts one such process per replica (``python -m
dedicate.engines.transformers_server``). It loads a model directory with plain
``transformers`` (``transformers_engine``), then serves
``/v1/chat/completions`` and ``/v1/completions`` (streamed or not),
``/v1/models``, ``/health`` and Prometheus ``/metrics``. It exists so the
platform can run end to end on a laptop without vLLM or a GPU.

Every ``/v1/*`` and ``/metrics`` request must carry the replica token, which
arrives in ``DEDICATE_REPLICA_TOKEN``: a command line is readable by every
user on the machine, an environment is not.

What this server has in common with the synthetic engine (the OpenAI shapes,
errors, SSE and metrics in ``protocol``; the process around it in ``serving``)
is shared with it; its pydantic request bodies are ``transformers_requests``',
its model and token loop ``transformers_engine``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final

import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from dedicate.engines.protocol import (
    BodyRenderer,
    EventStream,
    Reply,
    authorizer,
    bad_request,
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
    listen,
    positive_int,
    read_token,
    replica_server,
    serve,
)
from dedicate.engines.transformers_engine import Engine, SamplingParams
from dedicate.engines.transformers_requests import ChatRequest, CompletionRequest, parse_body

DEFAULT_CHAT_MAX_TOKENS: Final = 64
DEFAULT_COMPLETION_MAX_TOKENS: Final = 16

log = logging.getLogger("dedicate.engines.transformers_server")


# ------------------------------------------------------------------------ the app


def build_app(
    engine: Engine,
    token: str,
    *,
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """The ASGI app for one replica; loads the engine in the background if needed.

    Loading off the event loop keeps ``/health`` answering (503) while a large
    model loads, so the runtime can tell "still loading" from "dead".
    """
    if not token:
        raise ValueError("a replica token is required")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not engine.loaded:
            _start_loading(engine, asyncio.get_running_loop(), on_load_failure)
        yield

    app = FastAPI(
        title="dedicate transformers server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    _install_error_handlers(app)
    app.include_router(_public_routes(engine))
    app.include_router(_protected_routes(engine), dependencies=[Depends(authorizer(token))])
    return app


def _start_loading(engine: Engine, loop: asyncio.AbstractEventLoop, on_failure: Callable[[], None] | None) -> None:
    """Load on a daemon thread: a SIGTERM during a long load must not wait for it."""

    def run() -> None:
        try:
            engine.load()
        except Exception as exc:
            engine.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the model")
            if on_failure is not None:
                loop.call_soon_threadsafe(on_failure)

    threading.Thread(target=run, name="model-loader", daemon=True).start()


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI's envelope, never as FastAPI's default shapes."""

    async def on_validation_error(_request: Request, exc: Exception) -> Response:
        return bad_request(f"invalid request: {exc}").response()

    for kind, handler in exception_handlers(log).items():
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(RequestValidationError, on_validation_error)


def _public_routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        """200 only once the model can answer; the runtime routes traffic on this."""
        return health_response(engine.loaded, engine.load_error)

    return router


def _protected_routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = parse_body(await request.body(), ChatRequest)
        prompt_ids = engine.encode_chat(body.messages)
        params = engine.sampling_params(body, body.requested_max_tokens(), DEFAULT_CHAT_MAX_TOKENS, len(prompt_ids))
        reply = Reply.new("chatcmpl", engine.served_model_name, len(prompt_ids), body.include_usage())
        if body.stream:
            return EventStream(event_stream(engine.generate(prompt_ids, params), reply, chat_events, log))
        return await _respond(engine, request, prompt_ids, params, reply, chat_body)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse_body(await request.body(), CompletionRequest)
        prompt_ids = engine.encode_prompt(body.prompt_text())
        params = engine.sampling_params(body, body.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS, len(prompt_ids))
        reply = Reply.new("cmpl", engine.served_model_name, len(prompt_ids), body.include_usage())
        if body.stream:
            return EventStream(event_stream(engine.generate(prompt_ids, params), reply, completion_events, log))
        return await _respond(engine, request, prompt_ids, params, reply, completion_body)

    @router.get("/v1/models")
    async def models() -> JSONResponse:
        return models_response(engine.served_model_name, engine.context_length)

    @router.get("/metrics")
    async def metrics() -> Response:
        return metrics_response(render_metrics(engine))

    return router


async def _respond(
    engine: Engine,
    request: Request,
    prompt_ids: list[int],
    params: SamplingParams,
    reply: Reply,
    render: BodyRenderer,
) -> Response:
    """Run one non-streamed request, abandoning it if the client disconnects."""
    deltas = engine.generate(prompt_ids, params, disconnected=request.is_disconnected)
    async with contextlib.aclosing(deltas):
        result = await collect(deltas)
    return body_response(reply, result, render)


# ------------------------------------------------------------------------ metrics


def render_metrics(engine: Engine) -> str:
    """Prometheus text exposition (format 0.0.4) of the engine's counters."""
    return render_engine_metrics(
        running=engine.metrics.requests_running,
        waiting=engine.metrics.requests_waiting,
        requests_total=engine.metrics.requests_total,
        prompt_tokens_total=engine.metrics.prompt_tokens_total,
        generation_tokens_total=engine.metrics.generation_tokens_total,
        max_concurrency=engine.max_concurrency,
        loaded=engine.loaded,
    )


# --------------------------------------------------------------------- the process


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dedicate.engines.transformers_server",
        description=f"OpenAI-compatible server for one model replica. The bearer token is read from ${TOKEN_ENV}.",
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--served-model-name", required=True)
    add_process_arguments(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-concurrency", type=positive_int, default=1)
    parser.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        help="CPU threads for torch (default 1: replicas share small machines)",
    )
    parser.add_argument(
        "--shutdown-timeout", type=positive_int, default=5, help="seconds in-flight requests get after SIGTERM"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one replica until SIGTERM; exit 0 then, 1 if the model failed to load."""
    args = _parse_args(argv)
    configure_logging(args.replica_id, args.instance)
    token = read_token(log)
    if not token:
        return 2
    torch.set_num_threads(args.torch_threads)
    engine = Engine(args.model_dir, args.served_model_name, device=args.device, max_concurrency=args.max_concurrency)
    sock = listen(args.host, args.port, log)
    if sock is None:
        return 1
    servers: list[uvicorn.Server] = []  # the app must exist before the server it stops

    def stop_serving() -> None:
        for server in servers:
            server.should_exit = True

    app = build_app(engine, token, on_load_failure=stop_serving)
    server = replica_server(app, engine, args.shutdown_timeout, log)
    servers.append(server)
    asyncio.run(serve(server, sock, args.port_file, log))
    return 1 if engine.load_error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
