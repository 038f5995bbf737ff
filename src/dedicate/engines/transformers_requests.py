"""The transformers server's request bodies: strict pydantic models, and their 400s.

``parse_body`` turns a raw body into a ``ChatRequest`` or a ``CompletionRequest``,
or into an OpenAI error envelope naming the first offending field. The checks
past the types (framing, options this server refuses) are ``protocol``'s,
shared with the synthetic engine.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dedicate.engines.protocol import (
    APIError,
    bad_request,
    check_framing,
    content_part_text,
    json_object,
    refuse_chat_options,
    refuse_completion_options,
    single_prompt,
)


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


class SamplingBody(_Body):
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


class ChatRequest(SamplingBody):
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


class CompletionRequest(SamplingBody):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    def refuse_unsupported(self) -> None:
        refuse_completion_options(self.echo, self.logprobs, self.suffix)

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else single_prompt(self.prompt)


B = TypeVar("B", bound=SamplingBody)


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
