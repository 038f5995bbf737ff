"""The models an installation can run: the configured catalog, and the fine-tunes owners registered.

A registered fine-tune is its base model's spec under the fine-tune's name (``<owner>/<name>``),
with its weights in the directory it was registered from: it fits, runs and is priced as its
base. The configured models are fixed at start-up; the registered ones are the store's, read
through ``lookup`` when a name is asked for that the book does not hold, and kept for
``HIT_TTL_S`` (a deletion elsewhere is seen within it; one here at once, by ``forget``).
Iterating the book gives the configured models only, the catalog that listings show; a
fine-tune is found by its name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace

from dedicate.domain.models import ModelSpec

Lookup = Callable[[str], tuple[str, str] | None]  # a registered name -> (its base's name, its directory)
MISS_TTL_S = 5.0  # an unknown name is asked of the store again after this long
HIT_TTL_S = 30.0  # a known one too (it may have been deleted by another process)


class ModelBook(Mapping[str, ModelSpec]):
    def __init__(self, configured: Mapping[str, ModelSpec]) -> None:
        self._configured = dict(configured)
        self._registered: dict[str, tuple[ModelSpec, float]] = {}  # name -> (spec, when it was read)
        self._missed: dict[str, float] = {}
        self._lookup: Lookup | None = None
        self._lock = threading.Lock()

    def attach(self, lookup: Lookup) -> None:
        """Where registered fine-tunes are found (the store)."""
        self._lookup = lookup

    def registered(self, name: str, base: str, path: str) -> ModelSpec | None:
        """The spec of a fine-tune of ``base`` with weights at ``path``; None if its base is not configured."""
        spec = self._configured.get(base)
        return None if spec is None else replace(spec, name=name, source=path)

    def forget(self, name: str) -> None:
        """A deleted registration: asked of the store again next time."""
        with self._lock:
            self._registered.pop(name, None)

    def __getitem__(self, name: str) -> ModelSpec:
        spec = self._configured.get(name)
        if spec is not None:
            return spec
        held = self._registered.get(name)
        if held is not None and time.monotonic() - held[1] < HIT_TTL_S:
            return held[0]
        lookup = self._lookup
        if lookup is None or "/" not in name:
            raise KeyError(name)
        with self._lock:
            if time.monotonic() - self._missed.get(name, float("-inf")) < MISS_TTL_S:
                raise KeyError(name)
        found = lookup(name)
        spec = None if found is None else self.registered(name, *found)
        with self._lock:
            if spec is None:
                self._registered.pop(name, None)
                self._missed[name] = time.monotonic()
                raise KeyError(name)
            self._registered[name] = (spec, time.monotonic())
            self._missed.pop(name, None)
        return spec

    def is_registered(self, name: str) -> bool:
        """Whether ``name`` is an owner's fine-tune (its owner is the part before the first ``/``)."""
        return name not in self._configured and name in self

    def __iter__(self) -> Iterator[str]:
        return iter(self._configured)

    def __len__(self) -> int:
        return len(self._configured)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True
