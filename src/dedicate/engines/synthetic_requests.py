"""The synthetic engine's request bodies: checked by hand, and counted in made-up tokens.

Types are checked by hand, with the same rules as the transformers server's
strict pydantic models (a string where a number belongs is a 400; unknown
fields are ignored): pydantic alone would double the start-up time. The
checks past the types are ``protocol``'s, shared with that server. Its
tokenizer is a stand-in too: about four characters a token.

Like the rest of the synthetic engine it imports only the standard library
and ``protocol``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

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
