"""The transformers server's model: loading it, and generating replies token by token.

``Engine`` loads a model directory with plain ``transformers``, renders and
tokenizes prompts, and runs each request's own token loop with a KV cache (no
batching: small and predictable over fast), at most ``max_concurrency`` at
once. ``TextAssembler`` turns the token ids into text that is safe to stream
(whole characters, no stop string leaked). It knows nothing of HTTP;
``transformers_server`` serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import torch

from dedicate.engines.protocol import (
    Delta,
    FinishReason,
    bad_request,
    model_not_ready,
    reply_budget,
    shutting_down,
)
from dedicate.engines.transformers_requests import ChatMessage, ChatRequest, SamplingBody

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FALLBACK_CONTEXT_LENGTH: Final = 2048

log = logging.getLogger("dedicate.engines.transformers_server")  # the server's: one name in the replica's log


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
        # No model's own code runs, and weights load from safetensors only (a pickle can run code).
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype="auto", trust_remote_code=False,
                                                     use_safetensors=True)
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
        self, body: SamplingBody, requested: int | None, default: int, prompt_len: int
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
