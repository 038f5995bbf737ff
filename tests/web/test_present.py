"""How the console words the API's figures."""

from __future__ import annotations

from decimal import Decimal

from dedicate.web.present import DeploymentRow, money, percent, rate, shutdown_words, tone


def dep(**kw: object) -> DeploymentRow:
    base: dict[str, object] = dict(
        id="endpoint-1", name="default", display_name="d", model="m", hardware="1x_cpu", state="STARTED",
        status_message="1 of 1 replicas ready", queue_position=None, share=None, ready=1, desired=1, min_replicas=1,
        max_replicas=2, cost_cents=Decimal(0), burn_cents_per_minute=Decimal(0), inactive_timeout=None,
        cents_per_hour_at_min=Decimal(3), cents_per_hour_at_max=Decimal(6))
    base.update(kw)
    return DeploymentRow(**base)  # type: ignore[arg-type]


def test_money_is_dollars_to_the_cent_and_a_fraction_of_a_cent_is_not_zero() -> None:
    assert money(Decimal("1234.5")) == "$12.35"
    assert money(Decimal(0)) == "$0.00"
    assert money(Decimal("0.2")) == "<$0.01"
    assert money("250000") == "$2,500.00"
    assert money(None) == "—"


def test_a_rate_shows_the_minute_and_the_hour() -> None:
    assert rate(Decimal("0.50")) == "0.5¢/min · $0.30/h"


def test_a_queued_deployment_says_its_position_first() -> None:
    row = dep(state="PENDING", queue_position=3, ready=0, status_message="queued for 1x_cpu")
    assert row.summary == "queued: position 3" and row.deploying and row.can_stop and not row.can_start


def test_a_started_deployment_with_no_desired_replicas_is_scaled_to_zero() -> None:
    assert dep(desired=0, ready=0).summary == "scaled to zero"


def test_stopped_and_failed_deployments_can_be_started_and_not_stopped() -> None:
    for state in ("STOPPED", "ERROR"):
        row = dep(state=state, desired=0, ready=0)
        assert row.can_start and not row.deploying
    assert not dep(state="STOPPED").can_stop and not dep(state="STOPPING").can_stop


def test_states_have_a_tone_and_shares_a_percent() -> None:
    assert [tone(s) for s in ("STARTED", "PENDING", "STOPPED", "ERROR")] == ["ok", "busy", "off", "bad"]
    assert percent(0.666) == "67%" and percent(None) == ""
    assert shutdown_words(0) == "never" and shutdown_words(15) == "after 15 min idle"
