"""Preparing model weights: its own step, with its own state, never inside a reconcile pass.

Building the demo model, or any weights a replica needs before it can launch,
can take minutes. A pass that waited for it would stop probing, billing
observation and everything else. So a pass only asks: ``status(model)`` is
``Ready`` (launch now), ``Preparing`` (the replica stays placed; the endpoint's
message says so) or ``Failed`` (the launch fails with the reason). The first
ask starts the work in a background thread; the next passes see it finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dedicate.clock import Clock
from dedicate.control.models import ensure_builtin, model_dir
from dedicate.domain.models import ModelSpec

log = logging.getLogger("dedicate.weights")


@dataclass(frozen=True)
class Ready:
    path: Path | None  # None: the engine fetches the weights itself


@dataclass(frozen=True)
class Preparing:
    since: datetime

    def describe(self, model: str, now: datetime) -> str:
        return f"preparing the weights of {model} ({(now - self.since).total_seconds():.0f} s so far)"


@dataclass(frozen=True)
class Failed:
    reason: str


WeightsStatus = Ready | Preparing | Failed
Prepare = Callable[[Path, ModelSpec], Path | None]


class WeightsPreparer:
    def __init__(self, models_dir: Path, clock: Clock, prepare: Prepare = ensure_builtin) -> None:
        self.models_dir = models_dir
        self.clock = clock
        self._prepare = prepare
        self._tasks: dict[str, asyncio.Task[Path | None]] = {}
        self._started: dict[str, datetime] = {}
        self._ready: dict[str, Path | None] = {}

    async def status(self, spec: ModelSpec) -> WeightsStatus:
        """Where ``spec``'s weights are; starts preparing them if nobody has yet."""
        if spec.name in self._ready:
            return Ready(self._ready[spec.name])
        path = model_dir(self.models_dir, spec)
        if path is None or not spec.source.startswith("builtin:") or \
                await asyncio.to_thread((path / ".complete").exists):
            self._ready[spec.name] = path
            return Ready(path)
        task = self._tasks.get(spec.name)
        if task is not None and task.cancelled():  # its loop ended before it did: start over
            task = None
        if task is None:
            log.info("preparing the weights of %s in %s", spec.name, path)
            task = asyncio.ensure_future(asyncio.to_thread(self._prepare, self.models_dir, spec))
            self._tasks[spec.name] = task
            self._started[spec.name] = self.clock.now()
        if not task.done():
            return Preparing(self._started[spec.name])
        del self._tasks[spec.name]  # the next ask starts over: a failed build is tried again
        exc = task.exception()
        if exc is not None:
            return Failed(f"preparing the weights of {spec.name} failed: {exc}")
        self._ready[spec.name] = task.result()
        return Ready(task.result())

    def preparing(self, spec: ModelSpec) -> Preparing | None:
        task = self._tasks.get(spec.name)
        return Preparing(self._started[spec.name]) if task is not None and not task.done() else None

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
