"""Idle auto-shutdown: when an endpoint nobody uses should stop.

Pure: facts in, a reason (or None) out. An endpoint is idle when it is
``STARTED``, has an ``inactive_timeout`` (minutes; None or 0 = never), nothing
is in flight or held for it, and no request arrived for that long, counted
from when it became ``STARTED`` (a request before that does not count: an
endpoint just started gets its whole timeout).
"""

from __future__ import annotations

from datetime import datetime

from dedicate.domain.endpoints import EndpointState, Intent


def _at(t: datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def idle_reason(*, state: EndpointState, intent: Intent, inactive_timeout: int | None, started_at: datetime,
                last_request_at: datetime | None, busy: bool, now: datetime) -> str | None:
    """Why the endpoint should stop now, or None while it should keep running."""
    if intent is not Intent.RUN or state is not EndpointState.STARTED or not inactive_timeout or busy:
        return None
    since = started_at if last_request_at is None or last_request_at < started_at else last_request_at
    idle_s = (now - since).total_seconds()
    if idle_s < inactive_timeout * 60:
        return None
    what = "no request since it started at" if since == started_at else "last request at"
    return f"idle for {idle_s / 60:.0f} min ({what} {_at(since)}; inactive_timeout {inactive_timeout} min)"
