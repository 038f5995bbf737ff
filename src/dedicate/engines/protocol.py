"""The replica protocol both model servers speak, over HTTP.

``transformers_server`` and ``synthetic`` serve the same OpenAI-compatible
endpoints behind the same bearer token, with the same bodies, stream framing,
error envelopes and Prometheus names. What they share lives here: errors and
their handlers, the checks on a request that come after its fields have their
types, the reply and chunk shapes, SSE, ``/health``, ``/v1/models`` and
``/metrics``.

It imports only the standard library, starlette and ``prometheus-client`` (through
``dedicate.exposition``; never FastAPI, pydantic or torch), so that the synthetic
engine stays quick to start.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ExceptionHandler, Receive, Scope, Send

from dedicate import exposition

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Delta:
    """A piece of a reply. The last one of a request carries ``finish_reason``."""

    text: str
    finish_reason: FinishReason | None
    completion_tokens: int


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


def server_error(status: int, message: str, code: str) -> APIError:
    return APIError(status, message, type_="server_error", code=code)


def shutting_down() -> APIError:
    return server_error(503, "the replica is shutting down", "shutting_down")


def model_not_ready() -> APIError:
    return server_error(503, "the model is still loading", "model_not_ready")


def exception_handlers(log: logging.Logger) -> dict[Any, ExceptionHandler]:
    """Handlers that make every error leave as OpenAI's envelope, never a framework's own shape."""

    async def on_api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    async def on_unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return APIError(500, "internal server error", type_="server_error").response()

    return {APIError: on_api_error, HTTPException: on_http_error, Exception: on_unexpected}


def authorizer(token: str) -> Callable[[Request], None]:
    """A check of the request's bearer token; a 401 ``APIError`` when it is not ours."""
    expected = f"Bearer {token}".encode()

    def authorize(request: Request) -> None:
        """Constant-time comparison, so the token cannot be guessed byte by byte."""
        supplied = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            raise APIError(401, "missing or invalid bearer token", code="invalid_api_key")

    return authorize


# ------------------------------------------------------------------- request bodies
#
# Each server checks its fields' types its own way (strict pydantic models in
# the transformers server, by hand in the synthetic engine, where pydantic
# alone would double the start-up time); the rules below come after that.


def json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body, which must be one JSON object; every failure is a 400."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    return data


def check_framing(n: int | None, stream: bool, has_stream_options: bool) -> None:
    """One choice per reply, and stream options only on streams."""
    if n is not None and n != 1:
        raise bad_request("only n=1 is supported", "n")
    if has_stream_options and not stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")


def content_part_text(kind: str, text: str | None, message_index: int) -> str:
    """The text of one part of a list-valued message content; only ``text`` parts are usable here."""
    if kind != "text" or text is None:
        raise bad_request(f"only text content parts are supported, got {kind!r}", f"messages.{message_index}.content")
    return text


def single_prompt(prompts: list[str]) -> str:
    """A completion prompt given as a list: exactly one string."""
    if len(prompts) != 1:
        raise bad_request("prompt must be a string or a list holding one string", "prompt")
    return prompts[0]


# Options that would change the response's shape; silently dropping them would lie.


def refuse_chat_options(logprobs: bool | None) -> None:
    if logprobs:
        raise bad_request("logprobs are not supported by this server", "logprobs")


def refuse_completion_options(echo: bool, logprobs: int | None, suffix: str | None) -> None:
    for name, used in (("echo", echo), ("logprobs", logprobs is not None), ("suffix", bool(suffix))):
        if used:
            raise bad_request(f"{name} is not supported by this server", name)


def reply_budget(requested: int | None, default: int, prompt_tokens: int, context_length: int, param: str) -> int:
    """Cap the reply at what is left of the context; refuse prompts that fill it."""
    room = context_length - prompt_tokens
    if room <= 0:
        raise bad_request(
            f"prompt has {prompt_tokens} tokens; this model's context is {context_length} tokens",
            param,
            "context_length_exceeded",
        )
    return min(requested or default, room)


# ----------------------------------------------------------------- response shapes


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True)
class Reply:
    """Identity shared by every chunk of one response."""

    id: str
    created: int
    model: str
    prompt_tokens: int
    include_usage: bool = False

    @classmethod
    def new(cls, prefix: str, model: str, prompt_tokens: int, include_usage: bool) -> Reply:
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
        body["usage"] = usage(self.prompt_tokens, completion_tokens)
        return body


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


EventRenderer = Callable[[Reply, AsyncIterator[Delta]], AsyncIterator[str]]
BodyRenderer = Callable[[Reply, str, FinishReason, int], dict[str, Any]]


async def chat_events(reply: Reply, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
    """chat.completion.chunk events: role first, then content, then the finish."""

    def chunk(delta: dict[str, str], finish: FinishReason | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse(reply.envelope("chat.completion.chunk", [choice]))

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
        yield sse(reply.usage_chunk("chat.completion.chunk", completion_tokens))


async def completion_events(reply: Reply, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
    """text_completion events: one per piece of text, then the finish."""

    def chunk(text: str, finish: FinishReason | None = None) -> str:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return sse(reply.envelope("text_completion", [choice]))

    completion_tokens = 0
    async for delta in deltas:
        if delta.text and delta.finish_reason is None:
            yield chunk(delta.text)
        elif delta.finish_reason is not None:
            yield chunk(delta.text, delta.finish_reason)
        completion_tokens = delta.completion_tokens
    if reply.include_usage:
        yield sse(reply.usage_chunk("text_completion", completion_tokens))


def chat_body(reply: Reply, text: str, finish: FinishReason, tokens: int) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    body = reply.envelope("chat.completion", [choice])
    body["usage"] = usage(reply.prompt_tokens, tokens)
    return body


def completion_body(reply: Reply, text: str, finish: FinishReason, tokens: int) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body = reply.envelope("text_completion", [choice])
    body["usage"] = usage(reply.prompt_tokens, tokens)
    return body


async def event_stream(
    deltas: AsyncGenerator[Delta], reply: Reply, render: EventRenderer, log: logging.Logger
) -> AsyncGenerator[str]:
    """One streamed reply, ended OpenAI-style; a failure becomes an error event.

    ``aclosing`` stops generation the moment we stop reading.
    """
    async with contextlib.aclosing(deltas):
        try:
            async for event in render(reply, deltas):
                yield event
        except APIError as exc:
            yield sse(error_envelope(exc.message, exc.type, exc.param, exc.code))
        except Exception:
            log.exception("generation failed mid-stream")
            yield sse(error_envelope("generation failed", "server_error"))
    yield sse("[DONE]")


class EventStream(StreamingResponse):
    """An SSE response that always closes its events (after ``release``, if given).

    Starlette just stops iterating when the client goes away; closing the
    generator explicitly runs its cleanup (freeing the replica's slot) at once
    instead of whenever the garbage collector gets to it. ``release`` also
    covers a stream that never started (its generator's own ``finally`` would
    not run then).
    """

    def __init__(self, events: AsyncGenerator[str], release: Callable[[], None] | None = None) -> None:
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
            if self._release is not None:
                self._release()
            await self._events.aclose()


async def collect(deltas: AsyncIterator[Delta]) -> tuple[str, FinishReason, int] | None:
    """Gather a whole reply; None when the deltas ended without a finish (the client left)."""
    parts: list[str] = []
    async for delta in deltas:
        parts.append(delta.text)
        if delta.finish_reason is not None:
            return "".join(parts), delta.finish_reason, delta.completion_tokens
    return None


def body_response(reply: Reply, result: tuple[str, FinishReason, int] | None, render: BodyRenderer) -> Response:
    """A whole reply's response; a 499 when nobody was left to read it."""
    if result is None:
        return Response(status_code=499)  # nobody is listening; nginx's "client closed"
    text, finish, completion_tokens = result
    return JSONResponse(render(reply, text, finish, completion_tokens))


# ------------------------------------------------------------ health, models, metrics


def health_response(loaded: bool, load_error: str | None = None) -> JSONResponse:
    """200 only once the model can answer; the runtime routes traffic on this."""
    if loaded:
        return JSONResponse({"status": "ok"})
    if load_error is not None:
        return JSONResponse({"status": "error", "detail": load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


def models_response(served_model_name: str, max_model_len: int) -> JSONResponse:
    entry = {
        "id": served_model_name,
        "object": "model",
        "created": 0,
        "owned_by": "dedicate",
        "max_model_len": max_model_len,
    }
    return JSONResponse({"object": "list", "data": [entry]})


_METRICS: Final = (
    ("dedicate_engine_requests_running", exposition.gauge, "Requests generating right now."),
    ("dedicate_engine_requests_waiting", exposition.gauge, "Requests queued for a generation slot."),
    ("dedicate_engine_requests_total", exposition.counter, "Generation requests accepted."),
    ("dedicate_engine_prompt_tokens_total", exposition.counter, "Prompt tokens of accepted requests."),
    ("dedicate_engine_generation_tokens_total", exposition.counter, "Tokens generated."),
    ("dedicate_engine_max_concurrency", exposition.gauge, "Requests allowed to generate at once."),
    ("dedicate_engine_model_loaded", exposition.gauge, "1 once the model is loaded and serving."),
    ("dedicate_engine_requests_rejected_total", exposition.counter, "Requests refused because the queue was full."),
)


def metric_families(
    *,
    running: int,
    waiting: int,
    requests_total: int,
    prompt_tokens_total: int,
    generation_tokens_total: int,
    max_concurrency: int,
    loaded: bool,
    requests_rejected_total: int | None = None,
) -> list[exposition.Metric]:
    """An engine's metric families; the rejection counter only where an engine keeps one."""
    values = [running, waiting, requests_total, prompt_tokens_total, generation_tokens_total, max_concurrency]
    values.append(int(loaded))
    if requests_rejected_total is not None:
        values.append(requests_rejected_total)
    return [family(name, help_, (), [((), value)])
            for (name, family, help_), value in zip(_METRICS, values, strict=False)]


def render_metrics(
    *,
    running: int,
    waiting: int,
    requests_total: int,
    prompt_tokens_total: int,
    generation_tokens_total: int,
    max_concurrency: int,
    loaded: bool,
    requests_rejected_total: int | None = None,
) -> str:
    """Prometheus text exposition (format 0.0.4) of ``metric_families``."""
    return exposition.render(metric_families(
        running=running, waiting=waiting, requests_total=requests_total, prompt_tokens_total=prompt_tokens_total,
        generation_tokens_total=generation_tokens_total, max_concurrency=max_concurrency, loaded=loaded,
        requests_rejected_total=requests_rejected_total))


def metrics_response(text: str) -> Response:
    return Response(text, media_type=exposition.CONTENT_TYPE)
