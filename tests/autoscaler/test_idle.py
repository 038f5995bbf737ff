"""Idle auto-shutdown: when an endpoint nobody uses should stop, and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dedicate.autoscaler.idle import idle_reason
from dedicate.domain.endpoints import EndpointState, Intent

STARTED_AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def reason(minutes_after_start: float, *, timeout: int | None = 30, last: datetime | None = None, busy: bool = False,
           state: EndpointState = EndpointState.STARTED, intent: Intent = Intent.RUN) -> str | None:
    return idle_reason(state=state, intent=intent, inactive_timeout=timeout, started_at=STARTED_AT,
                       last_request_at=last, busy=busy, now=STARTED_AT + timedelta(minutes=minutes_after_start))


def test_never_used_it_stops_a_timeout_after_it_became_started() -> None:
    assert reason(29.9) is None
    assert reason(30) == ("idle for 30 min (no request since it started at 2026-03-02T09:00:00Z; "
                          "inactive_timeout 30 min)")


def test_the_last_request_restarts_the_clock() -> None:
    last = STARTED_AT + timedelta(minutes=20)
    assert reason(49, last=last) is None
    assert reason(51, last=last) == "idle for 31 min (last request at 2026-03-02T09:20:00Z; inactive_timeout 30 min)"


def test_a_request_before_it_became_started_does_not_count() -> None:
    assert reason(29, last=STARTED_AT - timedelta(hours=3)) is None
    assert reason(31, last=STARTED_AT - timedelta(hours=3)) is not None


def test_something_in_flight_or_held_keeps_it_running_however_old_the_last_arrival() -> None:
    assert reason(600, busy=True) is None


def test_no_timeout_or_zero_means_never() -> None:
    assert reason(10_000, timeout=None) is None
    assert reason(10_000, timeout=0) is None


def test_only_a_started_endpoint_meant_to_run_is_stopped_for_idleness() -> None:
    for state in (EndpointState.PENDING, EndpointState.STARTING, EndpointState.STOPPING, EndpointState.STOPPED,
                  EndpointState.ERROR):
        assert reason(600, state=state) is None
    assert reason(600, intent=Intent.STOP) is None
