"""The autoscaling policy, driven through time series of load with its state round-tripped through JSON.

Each pass in these tests is what the control loop does every 2 s: read the load, call
``decide`` with the state it stored last time, store the new state. Replicas become ready
as soon as they are wanted unless a test says otherwise (``capacity``, ``startup_s``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from dedicate.autoscaler.policy import Inputs, PolicyConfig, PolicyState, decide, recommend

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PASS_S = 2.0


def config(min_r: int = 1, max_r: int = 16, target: float = 10, stabilisation_s: float = 300) -> PolicyConfig:
    return PolicyConfig(min_r, max_r, target, stabilisation_s=stabilisation_s)


@dataclass
class Run:
    """One endpoint under a load function, pass by pass."""

    cfg: PolicyConfig
    desired: int = 1
    state_json: str | None = None
    t: float = 0.0
    capacity: int = 10**6  # replicas that can run at once; the rest stay queued
    persist: bool = True  # through JSON on every pass, as the control loop does; else kept in memory
    state: PolicyState = field(default_factory=PolicyState)
    history: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def step(self, in_flight: int, held: int = 0, **extra: object) -> int:
        ready = min(self.desired, self.capacity)
        inputs = Inputs(desired=self.desired, in_flight=in_flight, held=held, ready=ready, **extra)  # type: ignore[arg-type]
        state = PolicyState.from_json(self.state_json) if self.persist else self.state
        d = decide(inputs, state, T0 + timedelta(seconds=self.t), self.cfg)
        self.state, self.state_json = d.state, d.state.to_json()
        if d.explanation is not None:
            assert d.desired != self.desired
            self.events.append((self.t, d.explanation))
        else:
            assert d.desired == self.desired, "every change comes with its reason"
        self.desired = d.desired
        self.history.append((self.t, self.desired))
        self.t += PASS_S
        return self.desired

    def run(self, seconds: float, load: Callable[[float], int], held: Callable[[float], int] = lambda t: 0) -> None:
        end = self.t + seconds
        while self.t < end:
            self.step(load(self.t), held(self.t))

    def changes(self) -> int:
        return len(self.events)


def first_time(history: list[tuple[float, int]], pred: Callable[[int], bool], after: float = 0.0) -> float:
    return next(t for t, d in history if t >= after and pred(d))


# the words -----------------------------------------------------------------------------------------


def test_a_decision_says_what_it_saw_and_against_which_target() -> None:
    d = decide(Inputs(desired=3, in_flight=14, ready=3), PolicyState(), T0, config(target=3))
    assert d.desired == 5
    assert d.explanation == "3 → 5: in-flight 14 over target 3 per replica"


def test_requests_held_by_the_gateway_count_as_load_and_are_named() -> None:
    r = recommend(Inputs(desired=1, in_flight=8, held=5, ready=1), config(target=4))
    assert r.replicas == 4 and r.why == "in-flight 8 and 5 held by the gateway over target 4 per replica"


def test_a_burst_between_two_reports_counts_through_its_peak() -> None:
    d = decide(Inputs(desired=2, in_flight=3, ready=2, peak_load=12), PolicyState(), T0, config(target=4))
    assert d.desired == 3
    assert d.explanation == "2 → 3: in-flight 3, 12 at the busiest since the last report, " \
                            "over target 4 per replica"
    assert recommend(Inputs(desired=2, in_flight=5, held=2, peak_load=3), config(target=4)).replicas == 2, \
        "a peak below what is in flight now is stale"


# step load -----------------------------------------------------------------------------------------


def test_a_step_in_load_is_acted_on_at_the_next_pass_and_then_held() -> None:
    run = Run(config(target=10), desired=2)
    run.run(60, lambda t: 20)
    assert run.desired == 2 and run.changes() == 0
    step_at = run.t
    run.run(120, lambda t: 40)  # demand doubles
    up = first_time(run.history, lambda d: d == 4, after=step_at)
    assert up - step_at <= 10, "a burst that doubles demand is acted on within 10 s"
    assert up == step_at, "in fact at the first pass that sees it"
    assert [d for t, d in run.history if t >= up] == [4] * len([t for t, _ in run.history if t >= up])
    assert run.changes() == 1


def test_a_step_down_waits_for_the_stabilisation_window_then_goes_down_in_one_step() -> None:
    run = Run(config(target=10), desired=1)
    run.run(60, lambda t: 60)
    assert run.desired == 6
    drop_at = run.t
    run.run(400, lambda t: 15)
    down = first_time(run.history, lambda d: d < 6, after=drop_at)
    assert 300 <= down - drop_at <= 300 + 10 + PASS_S, "held for the 5 minute window (buckets of 10 s)"
    assert run.desired == 2 and run.changes() == 2, "6 → 2 at once, no staircase"
    assert "at most 2 needed in the last 5 min" in run.events[-1][1]


# ramp ----------------------------------------------------------------------------------------------


def test_a_ramp_is_followed_pass_by_pass_and_never_scaled_down_on_the_way() -> None:
    run = Run(config(target=10, max_r=20), desired=1)
    run.run(600, lambda t: int(t / 600 * 150))  # 0 → 150 in flight over 10 minutes
    ds = [d for _, d in run.history]
    assert ds == sorted(ds), "only up while the load rises"
    for t, d in run.history:
        assert d >= min(20, -(-int(t / 600 * 150) // 10)), "never behind the load it saw"
    assert run.desired == 15


# spike ---------------------------------------------------------------------------------------------


def test_a_spike_is_served_at_once_then_held_for_one_window_only() -> None:
    run = Run(config(target=10), desired=1)
    run.run(20, lambda t: 5)
    spike_at = run.t
    run.run(6, lambda t: 100)  # three passes of a tenfold spike
    assert run.desired == 10
    run.run(600, lambda t: 5)
    back = first_time(run.history, lambda d: d == 1, after=spike_at)
    assert 300 <= back - spike_at <= 320
    assert run.changes() == 2


# silence and zero ----------------------------------------------------------------------------------


def test_silence_goes_down_to_min_replicas_after_the_window_and_not_below() -> None:
    run = Run(config(min_r=2, target=10), desired=5)
    run.state_json = None  # a desired count nobody remembers deciding is held for a window too
    run.run(280, lambda t: 0)
    assert run.desired == 5, "not dropped at once"
    run.run(100, lambda t: 0)
    assert run.desired == 2 and run.changes() == 1


def test_with_min_zero_silence_scales_to_zero_and_one_held_request_brings_one_replica_back() -> None:
    run = Run(config(min_r=0, target=10), desired=1)
    run.run(30, lambda t: 1)
    quiet_at = run.t
    run.run(400, lambda t: 0)
    zero = first_time(run.history, lambda d: d == 0, after=quiet_at)
    assert 300 <= zero - quiet_at <= 320, "zero only after a whole window without traffic"
    assert run.events[-1][1].startswith("1 → 0: no traffic for 5 min; scaled to zero")
    run.step(in_flight=0, held=1)  # the gateway holds the first request: no replica to send it to
    assert run.desired == 1
    assert run.events[-1][1] == "0 → 1: in-flight 0 and 1 held by the gateway over target 10 per replica"


def test_min_zero_with_a_trickle_of_traffic_never_reaches_zero() -> None:
    run = Run(config(min_r=0, target=10), desired=1)
    run.run(1800, lambda t: 1 if int(t) % 240 < 4 else 0)  # one short request every 4 minutes
    assert min(d for _, d in run.history) == 1


# flapping input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("period_s", [10, 30, 120, 280])
def test_load_flapping_faster_than_the_window_gives_one_steady_count(period_s: int) -> None:
    run = Run(config(target=10), desired=1)
    run.run(1800, lambda t: 40 if int(t // (period_s / 2)) % 2 == 0 else 10)
    assert run.changes() == 1, run.events
    assert run.desired == 4
    run.run(400, lambda t: 10)
    assert run.changes() == 2 and run.desired == 1, "one step down once the flapping ends"


def test_noise_around_a_level_does_not_flap() -> None:
    run = Run(config(target=10, max_r=20), desired=1)
    noise = [3, -4, 1, 5, -2, 0, -5, 2, 4, -1]
    run.run(3600, lambda t: 50 + noise[int(t / PASS_S) % len(noise)])
    assert run.changes() == 1 and run.desired == 6


# bounds ----------------------------------------------------------------------------------------------


def test_bounds_changed_mid_flight_apply_at_the_next_pass_and_scaling_continues_within_them() -> None:
    run = Run(config(target=10, max_r=8), desired=1)
    run.run(20, lambda t: 80)
    assert run.desired == 8
    run.cfg = config(target=10, max_r=4)  # PATCH max_replicas 4
    run.step(80)
    assert run.events[-1][1] == "8 → 4: capped at max_replicas 4 (now in-flight 80 over target 10 per replica)"
    run.cfg = config(min_r=6, max_r=10, target=10)  # PATCH both bounds
    run.step(80)
    assert run.desired == 8, "the load asks for 8, now allowed"
    run.cfg = config(min_r=9, max_r=10, target=10)
    run.step(80)
    assert run.desired == 9 and run.events[-1][1].startswith("8 → 9: raised to min_replicas 9")
    run.cfg = config(min_r=1, max_r=10, target=10)
    run.run(100, lambda t: 10)
    assert run.desired == 8, "a lower minimum leaves what the load needed within the window"
    run.run(300, lambda t: 10)
    assert run.desired == 1


def test_a_manual_scale_up_is_held_for_one_window_then_follows_the_load() -> None:
    run = Run(config(target=10), desired=1)
    run.run(20, lambda t: 5)
    run.desired = 6  # POST /scale 6
    scaled_at = run.t
    run.run(290, lambda t: 5)
    assert run.desired == 6
    run.run(40, lambda t: 5)
    assert run.desired == 1 and first_time(run.history, lambda d: d == 1, after=scaled_at) - scaled_at >= 300


# capacity short ------------------------------------------------------------------------------------


def test_when_capacity_is_short_the_desired_count_stays_put_and_never_ratchets() -> None:
    run = Run(config(target=10), desired=2, capacity=3)
    run.run(300, lambda t: 80)  # wants 8; only 3 can run, 5 stay queued; the queue holds the rest
    assert run.desired == 8 and run.changes() == 1
    engine_full = Inputs(desired=8, in_flight=80, ready=3, engine_waiting=50)
    d = decide(engine_full, PolicyState.from_json(run.state_json), T0 + timedelta(seconds=run.t), run.cfg)
    assert d.desired == 8 and d.explanation is None, "the engines' waiting requests do not add to the queued"


def test_scaling_beyond_max_replicas_is_capped_with_a_reason() -> None:
    d = decide(Inputs(desired=2, in_flight=200, ready=2), PolicyState(), T0, config(max_r=5))
    assert d.desired == 5 and d.explanation == "2 → 5: in-flight 200 over target 10 per replica; held at max_replicas 5"


# the engines' own signals ----------------------------------------------------------------------------


def test_engines_full_below_the_target_ask_for_more_replicas() -> None:
    # The user's target (32) is more than the engines run at once: requests wait inside them.
    i = Inputs(desired=2, in_flight=40, ready=2, engine_waiting=8)
    d = decide(i, PolicyState(), T0, config(target=32))
    assert d.desired == 3
    assert "hold 8 request(s) waiting for a generation slot" in (d.explanation or "")


def test_one_waiting_request_on_many_replicas_is_imbalance_not_saturation() -> None:
    i = Inputs(desired=5, in_flight=40, ready=5, engine_waiting=1)
    assert decide(i, PolicyState(), T0, config(target=10)).desired == 5


def test_a_nearly_full_kv_cache_asks_for_more_replicas() -> None:
    i = Inputs(desired=4, in_flight=8, ready=4, kv_cache_usage=0.96)
    d = decide(i, PolicyState(), T0, config(target=10))
    assert d.desired == 5 and "KV cache 96% full over target 80%" in (d.explanation or "")


# state -----------------------------------------------------------------------------------------------


def test_a_restart_in_the_middle_of_a_window_forgets_nothing() -> None:
    continuous = Run(config(target=10), desired=1, persist=False)  # never stored: its memory is the truth
    continuous.run(30, lambda t: 70)
    continuous.run(200, lambda t: 10)
    restarted = Run(config(target=10), desired=continuous.desired, state_json=continuous.state_json,
                    t=continuous.t)
    restarted.run(200, lambda t: 10)
    continuous.run(200, lambda t: 10)
    assert restarted.history == continuous.history[-len(restarted.history):]


def test_an_unreadable_state_starts_afresh_without_dropping_replicas_at_once() -> None:
    for bad in ("not json", '{"v": 99}', '{"v": 1, "window": [["x", 1]]}', "[]"):
        assert PolicyState.from_json(bad) == PolicyState()
    d = decide(Inputs(desired=6, in_flight=0, ready=6), PolicyState.from_json("garbage"), T0, config())
    assert d.desired == 6


def test_the_window_stays_small_whatever_the_load() -> None:
    run = Run(config(target=1, max_r=64), desired=1)
    run.run(3600, lambda t: int(t * 7919) % 65)
    assert len(PolicyState.from_json(run.state_json).window) <= 65


def test_the_state_changes_at_most_once_per_bucket_under_steady_load() -> None:
    cfg = config(target=10)
    state = PolicyState()
    jsons = []
    for k in range(30):
        d = decide(Inputs(desired=3, in_flight=25, ready=3), state, T0 + timedelta(seconds=2 * k), cfg)
        state = d.state
        jsons.append(d.state.to_json())
    assert len(set(jsons)) <= 60 / cfg.bucket_s + 1
