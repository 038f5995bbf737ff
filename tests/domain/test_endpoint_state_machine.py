"""The endpoint state machine: next_state from replica counts, and the allowed transitions."""

from __future__ import annotations

import pytest

from dedicate.domain.endpoints import (
    ALLOWED,
    EndpointState,
    Intent,
    ReplicaCounts,
    check_transition,
    next_state,
)
from dedicate.domain.errors import Conflict

S = EndpointState
MAX_FAILURES = 3


def counts(*, desired: int = 2, ready: int = 0, starting: int = 0, queued: int = 0, stopping: int = 0) -> ReplicaCounts:
    return ReplicaCounts(desired=desired, ready=ready, starting=starting, queued=queued, stopping=stopping)


def run(
    current: EndpointState,
    c: ReplicaCounts,
    *,
    min_replicas: int = 2,
    failed: int = 0,
    intent: Intent = Intent.RUN,
) -> EndpointState:
    return next_state(current, intent, min_replicas, c, failed, MAX_FAILURES)


# live ------------------------------------------------------------------------------------------


def test_live_counts_ready_starting_and_stopping_but_not_queued() -> None:
    assert counts(ready=1, starting=2, stopping=3, queued=5).live == 6


# PENDING / STARTING ---------------------------------------------------------------------------


def test_pending_when_nothing_is_placed() -> None:
    assert run(S.PENDING, counts(queued=2)) is S.PENDING


def test_pending_stays_pending_while_everything_is_queued() -> None:
    assert run(S.PENDING, counts(desired=4, queued=4), min_replicas=4) is S.PENDING


def test_starting_when_a_replica_is_launching() -> None:
    assert run(S.PENDING, counts(starting=1, queued=1)) is S.STARTING


def test_starting_while_fewer_than_min_replicas_are_ready() -> None:
    assert run(S.STARTING, counts(ready=1, starting=1)) is S.STARTING


def test_starting_with_one_ready_and_the_rest_queued_before_ever_started() -> None:
    assert run(S.STARTING, counts(ready=1, queued=1)) is S.STARTING


def test_starting_falls_back_to_pending_when_launching_replicas_vanish() -> None:
    assert run(S.STARTING, counts(queued=2)) is S.PENDING


# STARTED ---------------------------------------------------------------------------------------


def test_started_only_once_min_replicas_are_ready() -> None:
    assert run(S.STARTING, counts(ready=1, starting=1), min_replicas=2) is S.STARTING
    assert run(S.STARTING, counts(ready=2), min_replicas=2) is S.STARTED


def test_started_straight_from_pending_when_min_replicas_are_ready() -> None:
    assert run(S.PENDING, counts(desired=1, ready=1), min_replicas=1) is S.STARTED


def test_started_is_kept_while_one_replica_is_ready() -> None:
    assert run(S.STARTED, counts(desired=4, ready=1, starting=1, queued=2), min_replicas=4) is S.STARTED


def test_started_drops_to_starting_when_no_replica_is_ready_but_one_launches() -> None:
    assert run(S.STARTED, counts(starting=2)) is S.STARTING


def test_started_drops_to_pending_when_no_replica_is_ready_or_launching() -> None:
    assert run(S.STARTED, counts(queued=2)) is S.PENDING


def test_more_ready_than_min_is_started() -> None:
    assert run(S.STARTING, counts(desired=5, ready=5), min_replicas=2) is S.STARTED


def test_min_replicas_zero_still_needs_one_ready_replica_to_start() -> None:
    assert run(S.STARTING, counts(desired=1, starting=1), min_replicas=0) is S.STARTING
    assert run(S.STARTING, counts(desired=1, ready=1), min_replicas=0) is S.STARTED


def test_scaled_to_zero_is_started() -> None:
    assert run(S.STARTED, counts(desired=0), min_replicas=0) is S.STARTED


def test_a_scale_to_zero_endpoint_stays_started_while_it_scales_from_zero() -> None:
    assert run(S.STARTED, counts(desired=1, starting=1), min_replicas=0) is S.STARTED
    assert run(S.STARTED, counts(desired=1, queued=1), min_replicas=0) is S.STARTED, "no capacity: still STARTED"
    assert run(S.STARTED, counts(desired=1), min_replicas=0, failed=MAX_FAILURES) is S.ERROR


# ERROR -----------------------------------------------------------------------------------------


def test_error_after_max_failures_before_any_replica_was_ready() -> None:
    assert run(S.STARTING, counts(starting=1), failed=MAX_FAILURES) is S.ERROR


def test_no_error_one_failure_short_of_the_limit() -> None:
    assert run(S.STARTING, counts(starting=1), failed=MAX_FAILURES - 1) is S.STARTING


def test_failures_do_not_cause_error_while_a_replica_is_ready() -> None:
    assert run(S.STARTED, counts(ready=1, starting=1), failed=MAX_FAILURES + 5) is S.STARTED


def test_error_from_pending_when_failures_reach_the_limit() -> None:
    assert run(S.PENDING, counts(queued=2), failed=MAX_FAILURES) is S.ERROR


@pytest.mark.parametrize(
    "c",
    [
        counts(),
        counts(ready=2),
        counts(starting=2),
        counts(desired=0),
    ],
    ids=["nothing", "min-ready", "launching", "desired-zero"],
)
def test_error_is_sticky_while_the_intent_is_run(c: ReplicaCounts) -> None:
    assert run(S.ERROR, c, failed=0) is S.ERROR


def test_error_is_left_by_a_stop() -> None:
    assert run(S.ERROR, counts(starting=1), intent=Intent.STOP) is S.STOPPING
    assert run(S.ERROR, counts(), intent=Intent.STOP) is S.STOPPED


def test_start_again_after_error_leaves_error_once_state_and_failures_are_reset() -> None:
    # The service resets state to PENDING and failures to 0 on a user's start.
    check_transition(S.ERROR, S.PENDING)
    assert run(S.PENDING, counts(starting=1), failed=0) is S.STARTING


# STOP intent -----------------------------------------------------------------------------------


@pytest.mark.parametrize("current", list(EndpointState))
@pytest.mark.parametrize(
    "c",
    [
        counts(ready=1),
        counts(starting=1),
        counts(stopping=1),
        counts(ready=1, starting=1, stopping=1, queued=1),
    ],
    ids=["ready", "starting", "stopping", "mixed"],
)
def test_stop_intent_is_stopping_while_replicas_are_live(current: EndpointState, c: ReplicaCounts) -> None:
    assert run(current, c, intent=Intent.STOP) is S.STOPPING


@pytest.mark.parametrize("current", list(EndpointState))
def test_stop_intent_is_stopped_once_no_replica_is_live(current: EndpointState) -> None:
    assert run(current, counts(queued=3), intent=Intent.STOP) is S.STOPPED


def test_stop_during_deployment_goes_stopping_then_stopped() -> None:
    state = run(S.PENDING, counts(starting=1))
    assert state is S.STARTING
    state = run(state, counts(stopping=1), intent=Intent.STOP)
    assert state is S.STOPPING
    check_transition(S.STARTING, state)
    new = run(state, counts(desired=0), intent=Intent.STOP)
    assert new is S.STOPPED
    check_transition(state, new)


def test_stop_intent_wins_over_failures() -> None:
    assert run(S.STARTING, counts(), failed=MAX_FAILURES * 2, intent=Intent.STOP) is S.STOPPED


# a full lifecycle ------------------------------------------------------------------------------


def test_a_whole_lifecycle_only_takes_allowed_transitions() -> None:
    steps: list[tuple[Intent, ReplicaCounts]] = [
        (Intent.RUN, counts(queued=2)),
        (Intent.RUN, counts(starting=1, queued=1)),
        (Intent.RUN, counts(ready=1, starting=1)),
        (Intent.RUN, counts(ready=2)),
        (Intent.RUN, counts(ready=1, starting=1)),
        (Intent.STOP, counts(stopping=2)),
        (Intent.STOP, counts(desired=0)),
    ]
    state = S.PENDING
    seen = [state]
    for intent, c in steps:
        new = run(state, c, intent=intent)
        check_transition(state, new)
        state = new
        seen.append(state)
    assert seen == [S.PENDING, S.PENDING, S.STARTING, S.STARTING, S.STARTED, S.STARTED, S.STOPPING, S.STOPPED]


# check_transition ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(EndpointState))
def test_staying_in_the_same_state_is_always_allowed(state: EndpointState) -> None:
    check_transition(state, state)


@pytest.mark.parametrize(
    ("current", "new"),
    [(current, new) for current, targets in ALLOWED.items() for new in targets],
)
def test_every_listed_transition_is_allowed(current: EndpointState, new: EndpointState) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.STOPPED, S.STARTED),
        (S.STOPPED, S.STOPPING),
        (S.STOPPED, S.ERROR),
        (S.STOPPING, S.ERROR),
    ],
)
def test_unlisted_transition_is_refused_with_a_conflict_naming_both_states(
    current: EndpointState, new: EndpointState
) -> None:
    with pytest.raises(Conflict) as exc:
        check_transition(current, new)
    assert str(current) in exc.value.message
    assert str(new) in exc.value.message
    assert exc.value.status == 409


def test_every_state_has_a_transition_table_entry() -> None:
    assert set(ALLOWED) == set(EndpointState)


def test_no_state_is_a_dead_end_for_a_users_start() -> None:
    # A user's start (→ PENDING or STARTING) is allowed from everywhere.
    for state in EndpointState:
        if state is not S.PENDING:
            assert S.PENDING in ALLOWED[state] or S.STARTING in ALLOWED[state]


def test_stop_is_allowed_from_every_running_state() -> None:
    for state in (S.PENDING, S.STARTING, S.STARTED, S.ERROR):
        check_transition(state, S.STOPPING)
        check_transition(state, S.STOPPED)
