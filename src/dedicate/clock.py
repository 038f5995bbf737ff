"""The one injectable UTC clock. Nothing else reads the time of day.

``SystemClock`` is the real one. ``FileClock`` reads the time from a file
(named by ``DEDICATE_TEST_CLOCK_FILE``), so tests move time forward by
writing the file, and the time survives a server restart.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FileClock:
    """Time is an ISO-8601 UTC instant written in the file (which must exist)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> datetime:
        text = self.path.read_text().strip()
        value = datetime.fromisoformat(text)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def set(self, value: datetime) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(value.isoformat())
        tmp.replace(self.path)


class ManualClock:
    """An in-memory clock for unit tests."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self._now += timedelta(seconds=seconds)


def clock_from_env() -> Clock:
    path = os.environ.get("DEDICATE_TEST_CLOCK_FILE")
    return FileClock(Path(path)) if path else SystemClock()
