"""Replica status is derived from the recorded facts by one pure function."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dedicate.domain.replicas import ReplicaFacts, ReplicaStatus, replica_status

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


NOTHING = ReplicaFacts(
    placed_at=None,
    launched_at=None,
    first_ready_at=None,
    last_probe_ok_at=None,
    probe_failures=0,
    exit_code=None,
    stop_requested_at=None,
    stopped_at=None,
)
PLACED = replace(NOTHING, placed_at=at(0))
LAUNCHED = replace(PLACED, launched_at=at(1))
READY = replace(LAUNCHED, first_ready_at=at(10), last_probe_ok_at=at(10))


def test_queued_when_nothing_happened_yet() -> None:
    assert replica_status(NOTHING) is ReplicaStatus.QUEUED


def test_placed_when_it_has_a_place_but_no_process() -> None:
    assert replica_status(PLACED) is ReplicaStatus.PLACED


def test_starting_once_launched_and_not_yet_ready() -> None:
    assert replica_status(LAUNCHED) is ReplicaStatus.STARTING


def test_ready_once_a_probe_passed() -> None:
    assert replica_status(READY) is ReplicaStatus.READY


def test_ready_is_kept_through_a_few_failed_probes() -> None:
    failing = replace(READY, last_probe_ok_at=at(10), probe_failures=2)
    assert replica_status(failing) is ReplicaStatus.READY


@pytest.mark.parametrize("facts", [NOTHING, PLACED, LAUNCHED, READY], ids=["queued", "placed", "starting", "ready"])
def test_stopping_once_a_stop_was_requested_whatever_it_was_doing(facts: ReplicaFacts) -> None:
    assert replica_status(replace(facts, stop_requested_at=at(20))) is ReplicaStatus.STOPPING


@pytest.mark.parametrize("facts", [PLACED, LAUNCHED, READY], ids=["placed", "starting", "ready"])
def test_stopped_when_it_ended_after_being_asked_to(facts: ReplicaFacts) -> None:
    stopped = replace(facts, stop_requested_at=at(20), stopped_at=at(21), exit_code=0)
    assert replica_status(stopped) is ReplicaStatus.STOPPED


@pytest.mark.parametrize("facts", [LAUNCHED, READY], ids=["starting", "ready"])
def test_failed_when_it_ended_without_being_asked_to(facts: ReplicaFacts) -> None:
    crashed = replace(facts, stopped_at=at(30), exit_code=1)
    assert replica_status(crashed) is ReplicaStatus.FAILED


def test_failed_even_with_exit_code_zero_when_no_stop_was_asked() -> None:
    assert replica_status(replace(READY, stopped_at=at(30), exit_code=0)) is ReplicaStatus.FAILED


def test_an_exit_code_alone_does_not_end_a_replica_until_stopped_at_is_recorded() -> None:
    assert replica_status(replace(LAUNCHED, exit_code=1)) is ReplicaStatus.STARTING


def test_a_replica_that_never_became_ready_and_was_stopped_is_stopped() -> None:
    stopped = replace(LAUNCHED, stop_requested_at=at(5), stopped_at=at(6))
    assert replica_status(stopped) is ReplicaStatus.STOPPED


def test_every_status_is_reachable() -> None:
    reached = {
        replica_status(f)
        for f in (
            NOTHING,
            PLACED,
            LAUNCHED,
            READY,
            replace(READY, stop_requested_at=at(20)),
            replace(READY, stop_requested_at=at(20), stopped_at=at(21)),
            replace(READY, stopped_at=at(21)),
        )
    }
    assert reached == set(ReplicaStatus)
