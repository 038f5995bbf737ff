"""Rating: exact money for replica-seconds, rounded once, half-even, to the cent."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicate.metering.rating import PricePrediction, charge_exact, predict, round_cents

prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000"), places=2)


def test_ninety_seconds_cost_one_and_a_half_minutes() -> None:
    assert charge_exact(Decimal("5.60"), 90) == Decimal("8.40")
    assert charge_exact(Decimal("0.05"), 90) == Decimal("0.075")


@given(prices)
def test_ninety_seconds_cost_exactly_one_and_a_half_times_the_price(price: Decimal) -> None:
    assert charge_exact(price, 90) == price * Decimal("1.5")


def test_zero_seconds_cost_nothing() -> None:
    assert charge_exact(Decimal("44.80"), 0) == 0


def test_a_minute_costs_the_per_minute_price() -> None:
    assert charge_exact(Decimal("5.60"), 60) == Decimal("5.60")


def test_fractional_seconds_are_prorated() -> None:
    assert charge_exact(Decimal("6"), Decimal("0.5")) == Decimal("0.05")


def test_an_hour_of_one_cpu_slot_is_three_cents() -> None:
    assert round_cents(charge_exact(Decimal("0.05"), 3600)) == Decimal("3")


@settings(derandomize=True)
@given(
    price=prices,
    seconds=st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=20),
)
def test_charging_a_split_period_equals_charging_the_whole_exactly(price: Decimal, seconds: list[int]) -> None:
    whole = charge_exact(price, sum(seconds))
    parts = sum((charge_exact(price, s) for s in seconds), Fraction(0))
    assert parts == whole


def test_thirty_one_second_intervals_bill_the_same_cents_as_thirty_seconds() -> None:
    # 30 s at 1 ¢/min is exactly 0.5 ¢, which rounds half-even to 0 ¢; as 30 intervals of
    # 1 s each the inexact parts add up to 0.5000…0008 ¢, which rounds to 1 ¢.
    whole = charge_exact(Decimal(1), 30)
    parts = sum((charge_exact(Decimal(1), 1) for _ in range(30)), Fraction(0))
    assert round_cents(parts) == round_cents(whole) == Decimal(0)


@given(
    price=prices,
    seconds=st.lists(st.integers(min_value=0, max_value=10**7).map(lambda s: s * 3), min_size=1, max_size=20),
)
def test_splits_at_multiples_of_three_seconds_add_up_exactly(price: Decimal, seconds: list[int]) -> None:
    # price has 2 decimals, so price x seconds / 60 terminates whenever 3 divides the seconds.
    whole = charge_exact(price, sum(seconds))
    parts = sum((charge_exact(price, s) for s in seconds), Fraction(0))
    assert parts == whole


@given(
    price=prices,
    seconds=st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=20),
)
def test_any_split_adds_up_to_the_whole_exactly(price: Decimal, seconds: list[int]) -> None:
    whole = charge_exact(price, sum(seconds))
    parts = sum((charge_exact(price, s) for s in seconds), Fraction(0))
    assert parts == whole


@pytest.mark.parametrize(
    ("exact", "rounded"),
    [
        ("0.5", "0"),
        ("1.5", "2"),
        ("2.5", "2"),
        ("3.5", "4"),
        ("-0.5", "-0"),
        ("2.4999", "2"),
        ("2.5001", "3"),
        ("0.075", "0"),
        ("8.40", "8"),
    ],
)
def test_round_cents_rounds_half_to_even(exact: str, rounded: str) -> None:
    assert round_cents(Decimal(exact)) == Decimal(rounded)


def test_round_cents_keeps_whole_cents_without_fraction_digits() -> None:
    assert str(round_cents(Decimal("336.000"))) == "336"


# predictions ------------------------------------------------------------------------------------


def test_prediction_gives_hourly_cents_at_min_and_max_replicas() -> None:
    p = predict(Decimal("5.60"), 1, 4)
    assert p.cents_per_hour_at_min == Decimal("336")
    assert p.cents_per_hour_at_max == Decimal("1344")


def test_prediction_rounds_the_hourly_figures_half_even() -> None:
    # 0.0125 ¢/min = 0.75 ¢/h per replica: 1 replica → 1 ¢, 2 replicas → 1.5 → 2 ¢, 10 → 7.5 → 8 ¢
    p = PricePrediction(Decimal("0.0125"), 1, 2)
    assert (p.cents_per_hour_at_min, p.cents_per_hour_at_max) == (Decimal("1"), Decimal("2"))
    assert PricePrediction(Decimal("0.0125"), 10, 10).cents_per_hour_at_min == Decimal("8")


def test_prediction_as_dict_shows_cents_and_dollars() -> None:
    d = predict(Decimal("44.80"), 1, 2).as_dict()
    assert d == {
        "cents_per_replica_minute": 44.8,
        "min_replicas": 1,
        "max_replicas": 2,
        "cents_per_hour_at_min": 2688.0,
        "cents_per_hour_at_max": 5376.0,
        "dollars_per_hour_at_min": 26.88,
        "dollars_per_hour_at_max": 53.76,
    }


@given(price=prices, lo=st.integers(1, 64), hi=st.integers(1, 64))
def test_prediction_at_max_is_never_below_prediction_at_min(price: Decimal, lo: int, hi: int) -> None:
    lo, hi = sorted((lo, hi))
    p = predict(price, lo, hi)
    assert p.cents_per_hour_at_min <= p.cents_per_hour_at_max
    assert p.cents_per_hour_at_min == round_cents(price * 60 * lo)
