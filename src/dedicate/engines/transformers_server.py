"""dedicate's own OpenAI-compatible model server for one replica.

The runtime starts one such process per replica. It loads a model directory
with plain ``transformers``, then serves ``/v1/chat/completions`` and
``/v1/completions`` (streamed or not), ``/v1/models``, ``/health`` and
Prometheus ``/metrics``. It exists so the platform can run end to end on a
laptop without vLLM or a GPU; it favours being small and predictable over
being fast (no batching: each request runs its own token loop with a KV cache).

Every ``/v1/*`` and ``/metrics`` request must carry the replica token, which
arrives in ``DEDICATE_REPLICA_TOKEN``: a command line is readable by every
user on the machine, an environment is not.

What this server has in common with the synthetic engine (the OpenAI shapes,
errors, SSE and metrics in ``protocol``; the process around it in ``serving``)
is shared with it; this module holds the model, its pydantic request models
and the token loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dedicate.engines.protocol import APIError as APIError
from dedicate.engines.protocol import (
    BodyRenderer,
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
    listen,
    positive_int,
    read_token,
    replica_server,
    serve,
)
from dedicate.engines.serving import bind_socket as bind_socket
from dedicate.engines.serving import write_port_file as write_port_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_CHAT_MAX_TOKENS: Final = 64
DEFAULT_COMPLETION_MAX_TOKENS: Final = 16
FALLBACK_CONTEXT_LENGTH: Final = 2048

log = logging.getLogger("dedicate.engines.transformers_server")


# ------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    """Strict parsing: a string where a number belongs is a client bug, not a hint.

    Unknown fields are ignored so that clients sending newer OpenAI options
    (logprobs, penalties, ...) still get an answer.
    """

    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class ContentPart(_Body):
    """One entry of a list-valued message content; only ``text`` parts are usable here."""

    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """Flatten OpenAI's content-part lists (checked by ``ChatRequest`` to be text)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class _SamplingBody(_Body):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None  # what torch accepts
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def refuse_unsupported(self) -> None:
        """Options that would change the response's shape; silently dropping them would lie."""


class ChatRequest(_SamplingBody):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None

    def refuse_unsupported(self) -> None:
        refuse_chat_options(self.logprobs)
        for index, message in enumerate(self.messages):
            for part in message.content if isinstance(message.content, list) else ():
                content_part_text(part.type, part.text, index)

    def requested_max_tokens(self) -> int | None:
        """OpenAI renamed max_tokens for chat; accept either spelling."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingBody):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    def refuse_unsupported(self) -> None:
        refuse_completion_options(self.echo, self.logprobs, self.suffix)

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else single_prompt(self.prompt)


B = TypeVar("B", bound=_SamplingBody)


def parse_body(raw: bytes, model: type[B]) -> B:
    """Decode and validate a JSON body, turning every failure into a 400."""
    try:
        body = model.model_validate(json_object(raw))
    except ValidationError as exc:
        raise _validation_error(exc) from None
    check_framing(body.n, body.stream, body.stream_options is not None)
    body.refuse_unsupported()
    return body


def _validation_error(exc: ValidationError) -> APIError:
    """Name the first offending field, in the dotted form OpenAI uses for param.

    Pydantic's locations also name union members ("prompt.list[str].0"); only
    field names and list indexes mean anything to a client, so the rest go.
    """
    first = exc.errors(include_url=False)[0]
    parts = [p for p in first["loc"] if isinstance(p, int) or p in _FIELD_NAMES]
    param = ".".join(str(p) for p in parts) or None
    prefix = f"{param}: " if param else ""
    return bad_request(f"{prefix}{first['msg']}", param)


_FIELD_NAMES: Final = frozenset(
    name
    for model in (StreamOptions, ContentPart, ChatMessage, ChatRequest, CompletionRequest)
    for name in model.model_fields
)


# ------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class SamplingParams:
    """Everything the token loop needs to know about one request."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Pick the next token: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest head whose mass reaches top_p (the top token always survives).
        keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p
        choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


class TextAssembler:
    """Turns generated token ids into text that is safe to hand out piece by piece.

    Two things make this subtle. A byte-level token can end in the middle of a
    UTF-8 character, so text ending in U+FFFD is held back until the
    character completes. And a stop string may arrive split across tokens, so
    any tail that could be the start of a stop string is held back too, which
    guarantees a stop string never leaks into the output. Decoding uses a
    short sliding window so each token costs O(1), not O(length).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._stops = tuple(stops)
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: decoding from here gives stable text
        self._read_offset = 0  # ids before this are already in self._text
        self._text = ""
        self._emitted = 0

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return the newly releasable text and whether a stop string hit."""
        self._ids.append(token_id)
        self._text += self._decode_new()
        return self._release(final=False)

    def finish(self) -> tuple[str, bool]:
        """Release everything still held back (the stream is over)."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._text += full[len(prefix) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        return self._release(final=True)

    def _decode(self, ids: Sequence[int]) -> str:
        text = self._tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text if isinstance(text, str) else "".join(text)

    def _decode_new(self) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""  # incomplete character (or nothing visible yet): wait for more
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full[len(prefix) :]

    def _release(self, *, final: bool) -> tuple[str, bool]:
        hit = self._find_stop()
        if hit is not None:
            piece = self._text[self._emitted : hit]
            self._emitted = len(self._text)
            return piece, True
        end = len(self._text) if final else len(self._text) - self._partial_stop_length()
        piece = self._text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        return piece, False

    def _find_stop(self) -> int | None:
        """Earliest stop-string position; text before ``_emitted`` was checked already."""
        hits = [i for s in self._stops if (i := self._text.find(s, self._emitted)) >= 0]
        return min(hits) if hits else None

    def _partial_stop_length(self) -> int:
        """Length of the longest tail that is the beginning of some stop string."""
        longest = max((len(s) for s in self._stops), default=0)
        for size in range(min(longest - 1, len(self._text) - self._emitted), 0, -1):
            tail = self._text[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0


# -------------------------------------------------------------------------- engine


@dataclass
class EngineMetrics:
    """Counters read by /metrics; touched only from the event loop, so no locks."""

    requests_running: int = 0
    requests_waiting: int = 0
    requests_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0


def resolve_device(device: str) -> str:
    """``auto`` means the GPU when one is usable, which is what an operator expects."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class _Decoding:
    """One request's forward loop: the KV cache, the RNG and the next input.

    ``step`` runs on a worker thread (torch calls block); inference mode is
    thread-local, so it is entered inside each step.
    """

    def __init__(self, model: PreTrainedModel, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        self._model = model
        self._params = params
        self._device = model.device
        self._next = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self._device)
        self._cache: Any = None
        self._generator = torch.Generator(device=self._device)
        if params.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(params.seed)

    def step(self) -> int:
        with torch.inference_mode():
            out = self._model(
                input_ids=self._next,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self._cache = out.past_key_values
            token = sample_token(out.logits[0, -1], self._params.temperature, self._params.top_p, self._generator)
            self._next = torch.tensor([[token]], dtype=torch.long, device=self._device)
        return token


class Engine:
    """A loaded model plus the admission queue and counters for one replica."""

    def __init__(
        self,
        model_dir: Path,
        served_model_name: str,
        *,
        device: str = "auto",
        max_concurrency: int = 1,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.served_model_name = served_model_name
        self.device = device
        self.max_concurrency = max_concurrency
        self.metrics = EngineMetrics()
        self.load_error: str | None = None
        self._loaded = threading.Event()
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._model: PreTrainedModel | None = None
        self._eos_ids: frozenset[int] = frozenset()
        self.context_length = FALLBACK_CONTEXT_LENGTH
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._abort_at: float | None = None  # set once shutting down

    def drain(self, grace_s: float) -> None:
        """Begin shutting down: refuse new work, end running work after ``grace_s``.

        Called from a signal handler, so it only records a deadline; the token
        loops notice it between tokens and end their replies cleanly.
        """
        if self._abort_at is None:
            self._abort_at = time.monotonic() + grace_s

    def _check_not_draining(self, *, running: bool) -> None:
        if self._abort_at is None or (running and time.monotonic() < self._abort_at):
            return
        raise shutting_down()

    # -- loading

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def load(self) -> None:
        """Load tokenizer and weights (blocking; seconds to minutes)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # progress bars would garble the replica's log file
        device = resolve_device(self.device)
        log.info("loading %s from %s on %s", self.served_model_name, self.model_dir, device)
        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype="auto")
        model = model.to(device).eval()  # type: ignore[arg-type]  # transformers' decorator stubs
        self._tokenizer, self._model = tokenizer, model
        self._eos_ids = _eos_ids(model, tokenizer)
        self.context_length = _context_length(model, tokenizer)
        self._loaded.set()
        elapsed = time.monotonic() - started
        log.info("model loaded in %.1fs (context %d)", elapsed, self.context_length)

    def _require_loaded(self) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
        if self._tokenizer is None or self._model is None or not self.loaded:
            raise model_not_ready()
        return self._tokenizer, self._model

    # -- prompts

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Render messages with the model's own chat template, ready for a reply."""
        tokenizer, _ = self._require_loaded()
        if not tokenizer.chat_template:
            raise bad_request("this model has no chat template; use /v1/completions", "messages")
        conversation = [{"role": _role(m.role), "content": m.text()} for m in messages]
        try:
            rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # template errors are the client's messages being refused
            message = f"messages rejected by the chat template: {exc}"
            raise bad_request(message, "messages") from None
        return self._encode(str(rendered), add_special_tokens=False)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Tokenize a raw prompt the way the model expects (e.g. with its BOS)."""
        tokenizer, _ = self._require_loaded()
        ids = self._encode(prompt, add_special_tokens=True)
        if not ids and tokenizer.bos_token_id is not None:
            ids = [int(tokenizer.bos_token_id)]  # a model cannot continue from nothing
        if not ids:
            raise bad_request("prompt is empty", "prompt")
        return ids

    def _encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        tokenizer, _ = self._require_loaded()
        encoded = tokenizer(text, add_special_tokens=add_special_tokens)
        return [int(i) for i in encoded["input_ids"]]

    def sampling_params(
        self, body: _SamplingBody, requested: int | None, default: int, prompt_len: int
    ) -> SamplingParams:
        """Cap the reply at what is left of the context; refuse prompts that fill it."""
        param = "messages" if isinstance(body, ChatRequest) else "prompt"
        return SamplingParams(
            max_tokens=reply_budget(requested, default, prompt_len, self.context_length, param),
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_strings(),
        )

    # -- generation

    async def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncGenerator[Delta]:
        """Yield the reply as it is generated; the last delta has a finish reason.

        Waits for a free slot first. Ends early, without a final delta, once
        ``disconnected`` reports the client gone; closing or cancelling the
        iterator also stops generation after the current token. Raises a 503
        ``APIError`` when the replica is shutting down and the grace is over.
        """
        tokenizer, model = self._require_loaded()
        self._check_not_draining(running=False)
        self.metrics.requests_total += 1
        self.metrics.prompt_tokens_total += len(prompt_ids)
        async with self._slot():
            self._check_not_draining(running=False)  # waited through the start of a shutdown
            decoding = _Decoding(model, prompt_ids, params)
            assembler = TextAssembler(tokenizer, params.stop)
            produced = 0
            ended = False  # the model chose to end (eos), as opposed to running out of room
            while produced < params.max_tokens:
                if disconnected is not None and await disconnected():
                    log.info("client went away after %d tokens; stopping", produced)
                    return
                self._check_not_draining(running=True)
                token = await asyncio.to_thread(decoding.step)
                produced += 1
                self.metrics.generation_tokens_total += 1
                if token in self._eos_ids:
                    ended = True
                    break
                text, stopped = assembler.push(token)
                if stopped:
                    yield Delta(text, "stop", produced)
                    return
                if text:
                    yield Delta(text, None, produced)
            text, stopped = assembler.finish()
            finish: FinishReason = "stop" if stopped or ended else "length"
            yield Delta(text, finish, produced)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Admission control: at most ``max_concurrency`` requests generate at once."""
        semaphore = self._admission_semaphore()
        self.metrics.requests_waiting += 1
        try:
            await semaphore.acquire()
        finally:
            self.metrics.requests_waiting -= 1
        self.metrics.requests_running += 1
        try:
            yield
        finally:
            self.metrics.requests_running -= 1
            semaphore.release()

    def _admission_semaphore(self) -> asyncio.Semaphore:
        """The semaphore for the running loop.

        asyncio primitives belong to one event loop; test clients start a new
        loop per client, so the semaphore is made afresh when the loop changes.
        """
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._semaphore_loop = loop
        return self._semaphore


def _role(role: str) -> str:
    """OpenAI's newer ``developer`` role plays the part of ``system`` for chat templates."""
    return "system" if role == "developer" else role


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """End-of-reply ids from the generation config and the tokenizer, whichever exist."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def _context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The model's position limit; tokenizers often report absurd sentinels instead."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return FALLBACK_CONTEXT_LENGTH


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
