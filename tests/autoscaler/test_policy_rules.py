"""v2's scaling rules in the pure policy: the up window, the down and zero windows, rate policies.

Driven like ``test_policy.py``: a pass every 2 s, the state round-tripped through JSON each time.
"""

from __future__ import annotations

from dataclasses import replace

from dedicate.autoscaler.policy import PolicyConfig
from dedicate.domain.scaling import Kind, RatePolicy, RateRules, Select
from tests.autoscaler.test_policy import Run


def cfg(**kw: object) -> PolicyConfig:
    return replace(PolicyConfig(0, 32, 10, stabilisation_s=60), **kw)  # type: ignore[arg-type]


def first_change_at(run: Run) -> float:
    return next(t for t, _ in run.events)


def test_an_up_window_holds_an_increase_until_the_load_has_asked_for_it_that_long() -> None:
    run = Run(cfg(up_window_s=30), desired=1)
    run.run(20, lambda t: 5)  # steady at 1 replica's worth
    run.run(60, lambda t: 50)  # asks for 5
    ups = [(t, why) for t, why in run.events if "→ 5" in why]
    assert ups and 20 + 30 <= ups[0][0] <= 20 + 30 + 2 * 2, run.events
    assert "up window" in ups[0][1]
    blip = Run(cfg(up_window_s=30), desired=1)
    blip.run(20, lambda t: 5)
    blip.run(10, lambda t: 50)  # a 10 s burst: shorter than the window
    blip.run(40, lambda t: 5)
    assert max(d for _, d in blip.history) == 1, blip.events


def test_without_an_up_window_an_increase_is_at_once() -> None:
    run = Run(cfg(), desired=1)
    run.run(4, lambda t: 50)
    assert run.desired == 5 and first_change_at(run) == 0


def test_a_pods_policy_caps_each_period_and_select_min_takes_the_smaller() -> None:
    two_a_minute = RateRules((RatePolicy(Kind.PODS, 2, 60),))
    run = Run(cfg(up_rate=two_a_minute), desired=1)
    run.run(30, lambda t: 200)  # asks for 20
    assert run.desired == 3, run.events  # 1 + 2 within the first minute
    assert "scaleUp" in run.events[-1][1]
    run.run(62, lambda t: 200)
    assert run.desired == 5, "two more once a minute has passed since the count was 3"
    both = RateRules((RatePolicy(Kind.PODS, 4, 60), RatePolicy(Kind.PERCENT, 100, 60)), Select.MIN)
    run = Run(cfg(up_rate=both), desired=2)
    run.run(10, lambda t: 200)
    assert run.desired == 4, run.events  # min(2 + 4, 2 + 100 % of 2)


def test_a_disabled_direction_never_moves_that_way() -> None:
    run = Run(cfg(down_rate=RateRules((), Select.DISABLED)), desired=6)
    run.run(300, lambda t: 0)
    assert run.desired == 6
    run = Run(cfg(up_rate=RateRules((), Select.DISABLED)), desired=1)
    run.run(30, lambda t: 200)
    assert run.desired == 1


def test_a_percent_policy_scales_down_by_a_share_of_the_count_per_period() -> None:
    run = Run(cfg(down_rate=RateRules((RatePolicy(Kind.PERCENT, 50, 60),)), stabilisation_s=10), desired=16)
    run.run(30, lambda t: 0)
    assert run.desired == 8, run.events
    run.run(62, lambda t: 0)
    assert run.desired == 4


def test_the_zero_window_is_how_long_silence_lasts_before_no_replica_is_left() -> None:
    run = Run(cfg(zero_window_s=120, stabilisation_s=10), desired=3)
    run.run(60, lambda t: 0)
    assert run.desired == 1, "down to one with the down window; not to zero yet"
    run.run(70, lambda t: 0)
    assert run.desired == 0 and "scaled to zero" in run.events[-1][1]


def test_a_latency_metric_over_its_target_asks_for_replicas_in_proportion() -> None:
    from dedicate.autoscaler.policy import Inputs, recommend
    from dedicate.domain.scaling import Metric

    c = cfg(metric=Metric("ttft", 200, 95))
    slow = recommend(Inputs(desired=2, in_flight=2, ready=2, latency_ms=500), c)
    assert slow.replicas == 5 and "ttft p95 500 ms over target 200 ms" in slow.why
    fast = recommend(Inputs(desired=2, in_flight=2, ready=2, latency_ms=50), c)
    assert fast.replicas == 1, "under target: the in-flight count decides"
    tokens = recommend(Inputs(desired=1, in_flight=1, ready=1, tokens_per_s=250),
                       cfg(metric=Metric("throughput_per_replica", 100)))
    assert tokens.replicas == 3
    full = recommend(Inputs(desired=2, in_flight=1, ready=2, kv_cache_usage=0.6),
                     cfg(metric=Metric("token_utilization", 50)))
    assert full.replicas == 3, "the KV-cache target is the metric's: 2 x 0.6 / 0.5"
