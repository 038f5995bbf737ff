"""The synthetic engine's fake model: its speed, its stream slots and its queue.

Each reply is ``max_tokens`` made-up tokens ("tok1 tok2 ...") produced on a
timer: the first ``ttft_s`` seconds after a request gets a stream slot, then
one every ``1 / tokens_per_s`` seconds. At most ``max_streams`` requests
generate at once (a real engine's batch); the rest wait in a FIFO queue of at
most ``max_queue``, beyond which requests get a 503. Every wait is an asyncio
timer, so hundreds of concurrent streams cost almost no CPU.

It knows nothing of HTTP; ``synthetic`` serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Final

from dedicate.engines.protocol import (
    APIError,
    Delta,
    model_not_ready,
    reply_budget,
    server_error,
    shutting_down,
)

DEFAULT_MAX_TOKENS: Final = 16

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
