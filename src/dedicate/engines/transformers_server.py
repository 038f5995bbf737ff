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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOKEN_ENV: Final = "DEDICATE_REPLICA_TOKEN"
DEFAULT_CHAT_MAX_TOKENS: Final = 64
DEFAULT_COMPLETION_MAX_TOKENS: Final = 16
FALLBACK_CONTEXT_LENGTH: Final = 2048

log = logging.getLogger("dedicate.engines.transformers_server")

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
        """The JSON response; 401s also name the scheme, as HTTP asks."""
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(
            error_envelope(self.message, self.type, self.param, self.code),
            status_code=self.status,
            headers=headers,
        )


def error_envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which OpenAI client libraries know how to surface."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


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
        if self.logprobs:
            raise bad_request("logprobs are not supported by this server", "logprobs")
        for index, message in enumerate(self.messages):
            for part in message.content if isinstance(message.content, list) else ():
                if part.type != "text" or part.text is None:
                    raise bad_request(
                        f"only text content parts are supported, got {part.type!r}",
                        f"messages.{index}.content",
                    )

    def requested_max_tokens(self) -> int | None:
        """OpenAI renamed max_tokens for chat; accept either spelling."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingBody):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    def refuse_unsupported(self) -> None:
        for name, used in (("echo", self.echo), ("logprobs", self.logprobs is not None), ("suffix", bool(self.suffix))):
            if used:
                raise bad_request(f"{name} is not supported by this server", name)

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise bad_request("prompt must be a string or a list holding one string", "prompt")
        return self.prompt[0]


B = TypeVar("B", bound=_SamplingBody)


def parse_body(raw: bytes, model: type[B]) -> B:
    """Decode and validate a JSON body, turning every failure into a 400."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if body.n != 1:
        raise bad_request("only n=1 is supported", "n")
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
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


@dataclass(frozen=True)
class Delta:
    """A piece of a reply. The last one of a request carries ``finish_reason``."""

    text: str
    finish_reason: FinishReason | None
    completion_tokens: int


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
        raise APIError(503, "the replica is shutting down", type_="server_error", code="shutting_down")

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
            raise APIError(503, "the model is still loading", type_="server_error", code="model_not_ready")
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
        room = self.context_length - prompt_len
        if room <= 0:
            raise bad_request(
                f"prompt has {prompt_len} tokens; this model's context is {self.context_length} tokens",
                "messages" if isinstance(body, ChatRequest) else "prompt",
                "context_length_exceeded",
            )
        return SamplingParams(
            max_tokens=min(requested or default, room),
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
        reply_id = f"{prefix}-{uuid.uuid4().hex}"
        return cls(reply_id, int(time.time()), model, prompt_tokens, include_usage)

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
    """text_completion events: one per piece of text, then the finish."""

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


async def _with_done(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Terminate the stream OpenAI-style, turning a failure into an error event."""
    try:
        async for event in events:
            yield event
    except APIError as exc:
        yield _sse(error_envelope(exc.message, exc.type, exc.param, exc.code))
    except Exception:
        log.exception("generation failed mid-stream")
        yield _sse(error_envelope("generation failed", "server_error"))
    yield _sse("[DONE]")


class _EventStream(StreamingResponse):
    """An SSE response that always closes its event generator.

    Starlette just stops iterating when the client goes away; closing the
    generator explicitly runs its cleanup (freeing the replica's slot) at once
    instead of whenever the garbage collector gets to it.
    """

    def __init__(self, events: AsyncGenerator[str]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


async def _collect(deltas: AsyncIterator[Delta]) -> tuple[str, FinishReason, int] | None:
    """Gather a whole reply; None when the client left before it was done."""
    parts: list[str] = []
    async for delta in deltas:
        parts.append(delta.text)
        if delta.finish_reason is not None:
            return "".join(parts), delta.finish_reason, delta.completion_tokens
    return None


# ------------------------------------------------------------------------ the app


def _authorizer(token: str) -> Callable[[Request], None]:
    expected = f"Bearer {token}".encode()

    def authorize(request: Request) -> None:
        """Constant-time comparison, so the token cannot be guessed byte by byte."""
        supplied = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            raise APIError(
                401,
                "missing or invalid bearer token",
                type_="invalid_request_error",
                code="invalid_api_key",
            )

    return authorize


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
    app.include_router(_protected_routes(engine), dependencies=[Depends(_authorizer(token))])
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

    async def on_api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    async def on_validation_error(_request: Request, exc: Exception) -> Response:
        return bad_request(f"invalid request: {exc}").response()

    async def on_unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return APIError(500, "internal server error", type_="server_error").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)


def _public_routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        """200 only once the model can answer; the runtime routes traffic on this."""
        if engine.loaded:
            return JSONResponse({"status": "ok"})
        if engine.load_error is not None:
            return JSONResponse({"status": "error", "detail": engine.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    return router


def _protected_routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = parse_body(await request.body(), ChatRequest)
        prompt_ids = engine.encode_chat(body.messages)
        params = engine.sampling_params(body, body.requested_max_tokens(), DEFAULT_CHAT_MAX_TOKENS, len(prompt_ids))
        reply = _Reply.new("chatcmpl", engine.served_model_name, len(prompt_ids), body.include_usage())
        if body.stream:
            return _EventStream(_stream(engine, prompt_ids, params, reply, _chat_events))
        return await _respond(engine, request, prompt_ids, params, reply, _chat_body)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse_body(await request.body(), CompletionRequest)
        prompt_ids = engine.encode_prompt(body.prompt_text())
        params = engine.sampling_params(body, body.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS, len(prompt_ids))
        reply = _Reply.new("cmpl", engine.served_model_name, len(prompt_ids), body.include_usage())
        if body.stream:
            return _EventStream(_stream(engine, prompt_ids, params, reply, _completion_events))
        return await _respond(engine, request, prompt_ids, params, reply, _completion_body)

    @router.get("/v1/models")
    async def models() -> JSONResponse:
        entry = {
            "id": engine.served_model_name,
            "object": "model",
            "created": 0,
            "owned_by": "dedicate",
            "max_model_len": engine.context_length,
        }
        return JSONResponse({"object": "list", "data": [entry]})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(render_metrics(engine), media_type="text/plain; version=0.0.4")

    return router


EventRenderer = Callable[[_Reply, AsyncIterator[Delta]], AsyncIterator[str]]
BodyRenderer = Callable[[_Reply, str, FinishReason, int], dict[str, Any]]


async def _stream(
    engine: Engine,
    prompt_ids: list[int],
    params: SamplingParams,
    reply: _Reply,
    render: EventRenderer,
) -> AsyncGenerator[str]:
    """Run one streamed request; aclosing() stops generation the moment we stop reading."""
    async with contextlib.aclosing(engine.generate(prompt_ids, params)) as deltas:
        async for event in _with_done(render(reply, deltas)):
            yield event


async def _respond(
    engine: Engine,
    request: Request,
    prompt_ids: list[int],
    params: SamplingParams,
    reply: _Reply,
    render: BodyRenderer,
) -> Response:
    """Run one non-streamed request, abandoning it if the client disconnects."""
    deltas = engine.generate(prompt_ids, params, disconnected=request.is_disconnected)
    async with contextlib.aclosing(deltas):
        result = await _collect(deltas)
    if result is None:
        return Response(status_code=499)  # nobody is listening; nginx's "client closed"
    text, finish, completion_tokens = result
    return JSONResponse(render(reply, text, finish, completion_tokens))


def _chat_body(reply: _Reply, text: str, finish: FinishReason, tokens: int) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish,
    }
    body = reply.envelope("chat.completion", [choice])
    body["usage"] = _usage(reply.prompt_tokens, tokens)
    return body


def _completion_body(reply: _Reply, text: str, finish: FinishReason, tokens: int) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body = reply.envelope("text_completion", [choice])
    body["usage"] = _usage(reply.prompt_tokens, tokens)
    return body


# ------------------------------------------------------------------------ metrics

_METRICS: Final = (
    ("dedicate_engine_requests_running", "gauge", "Requests generating right now.", "requests_running"),
    ("dedicate_engine_requests_waiting", "gauge", "Requests queued for a generation slot.", "requests_waiting"),
    ("dedicate_engine_requests_total", "counter", "Generation requests accepted.", "requests_total"),
    ("dedicate_engine_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", "prompt_tokens_total"),
    ("dedicate_engine_generation_tokens_total", "counter", "Tokens generated.", "generation_tokens_total"),
)


def render_metrics(engine: Engine) -> str:
    """Prometheus text exposition (format 0.0.4) of the engine's counters."""
    lines: list[str] = []
    samples = [(name, kind, help_, getattr(engine.metrics, attr)) for name, kind, help_, attr in _METRICS]
    samples.append(
        ("dedicate_engine_max_concurrency", "gauge", "Requests allowed to generate at once.", engine.max_concurrency)
    )
    samples.append(
        ("dedicate_engine_model_loaded", "gauge", "1 once the model is loaded and serving.", int(engine.loaded))
    )
    for name, kind, help_, value in samples:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- the process


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dedicate.engines.transformers_server",
        description=f"OpenAI-compatible server for one model replica. The bearer token is read from ${TOKEN_ENV}.",
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--replica-id", default="", help="label for logs and process lookup")
    parser.add_argument("--instance", default="", help="label for logs and process lookup")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-concurrency", type=_positive_int, default=1)
    parser.add_argument(
        "--torch-threads",
        type=_positive_int,
        default=1,
        help="CPU threads for torch (default 1: replicas share small machines)",
    )
    parser.add_argument(
        "--shutdown-timeout", type=_positive_int, default=5, help="seconds in-flight requests get after SIGTERM"
    )
    return parser.parse_args(argv)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind ourselves so port 0 works and we learn the real port before serving."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
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


async def _serve(server: uvicorn.Server, sock: socket.socket, port_file: Path | None) -> None:
    """Serve until told to stop; announce the port once uvicorn is accepting."""
    port = int(sock.getsockname()[1])
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if server.started:
        log.info("listening on %s:%d", sock.getsockname()[0], port)
        if port_file is not None:
            write_port_file(port_file, port)
    await serving


class _ReplicaServer(uvicorn.Server):
    """uvicorn, plus telling the engine when a shutdown signal arrives.

    uvicorn alone would wait for streams and then cancel them mid-body after
    its timeout; draining the engine first ends them as well-formed replies.
    """

    def __init__(self, config: uvicorn.Config, engine: Engine, grace_s: float) -> None:
        super().__init__(config)
        self._engine = engine
        self._grace_s = grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            name = signal.Signals(sig).name
            log.info("%s: shutting down, in-flight requests get %ss", name, self._grace_s)
        self._engine.drain(self._grace_s)
        super().handle_exit(sig, frame)


def _signal_handler(server: uvicorn.Server) -> Callable[[int, FrameType | None], None]:
    """The handler in place outside uvicorn's own (before it starts, after it stops).

    uvicorn re-raises a caught signal once it has shut down; with the default
    handler SIGTERM would then kill us with status -15 instead of exiting 0.
    Before uvicorn is up, the same handler makes an early SIGTERM still count.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        server.handle_exit(signum, frame)

    return handle


class _QuietPolling(logging.Filter):
    """Drop access-log lines for successful health and metrics polls.

    The runtime and the metrics scraper poll every few seconds; logging each
    poll would bury the requests worth reading in the replica's log file.
    """

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
    """Run one replica until SIGTERM; exit 0 then, 1 if the model failed to load."""
    args = _parse_args(argv)
    _configure_logging(args)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        log.error("%s is not set; refusing to serve without authentication", TOKEN_ENV)
        return 2
    torch.set_num_threads(args.torch_threads)
    engine = Engine(args.model_dir, args.served_model_name, device=args.device, max_concurrency=args.max_concurrency)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    servers: list[uvicorn.Server] = []  # the app must exist before the server it stops

    def stop_serving() -> None:
        for server in servers:
            server.should_exit = True

    app = build_app(engine, token, on_load_failure=stop_serving)
    # uvicorn's own timeout is the backstop, a little after the engine's deadline.
    config = uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=args.shutdown_timeout + 2, lifespan="on")
    server = _ReplicaServer(config, engine, grace_s=args.shutdown_timeout)
    servers.append(server)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _signal_handler(server))
    asyncio.run(_serve(server, sock, args.port_file))
    return 1 if engine.load_error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
