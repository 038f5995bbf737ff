"""Handing calls to the event loop: API handlers run services in worker threads.

Objects owned by the event loop (the reconciler's wake event, the gateway's
key cache) must only be touched from the loop's thread: an ``asyncio.Event``
set from another thread does not wake the loop, and a dict the loop mutates
cannot be iterated from another thread. A service calls such an object
through a ``LoopHandoff``, which runs the call at once on the loop's own
thread and otherwise schedules it there with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class LoopHandoff:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on, calls run on ``loop`` (call this on the loop's thread)."""
        self._loop, self._thread = loop, threading.get_ident()

    def __call__(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or threading.get_ident() == self._thread:
            fn(*args)  # no loop yet (start-up, unit tests), or already on its thread
            return
        loop.call_soon_threadsafe(fn, *args)

    def wrap(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn``, callable from any thread."""
        return lambda *args: self(fn, *args)
