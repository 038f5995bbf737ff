"""Validation and naming of what a user sends when creating or updating an endpoint."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedicate.domain.endpoints import (
    MAX_DISPLAY_NAME,
    MAX_REPLICAS,
    Autoscaling,
    model_slug,
    new_endpoint_id,
    new_endpoint_name,
    validate_autoscaling,
    validate_display_name,
    validate_inactive_timeout,
    validate_owner,
    validate_target_concurrency,
)
from dedicate.domain.errors import InvalidRequest

# validate_autoscaling ---------------------------------------------------------------------------


def test_valid_bounds_are_returned() -> None:
    assert validate_autoscaling(1, 4) == Autoscaling(min_replicas=1, max_replicas=4)


def test_equal_bounds_are_accepted() -> None:
    assert validate_autoscaling(3, 3) == Autoscaling(3, 3)


def test_max_replicas_at_the_cap_is_accepted() -> None:
    assert validate_autoscaling(1, MAX_REPLICAS).max_replicas == MAX_REPLICAS


def test_min_replicas_zero_is_accepted_for_scale_to_zero() -> None:
    assert validate_autoscaling(0, 2) == Autoscaling(0, 2)


def test_negative_min_replicas_is_refused_naming_zero_as_the_lowest() -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_autoscaling(-1, 2)
    assert "at least 0" in exc.value.message and "scale to zero" in exc.value.message
    assert exc.value.param == "autoscaling.min_replicas"


def test_max_replicas_zero_is_refused_pointing_at_stop() -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_autoscaling(0, 0)
    assert "STOPPED" in exc.value.message and exc.value.param == "autoscaling.max_replicas"


@pytest.mark.parametrize("value", [0, -1, 0.0, "4", True, float("nan"), 10_000])
def test_bad_target_concurrency_is_refused(value: object) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_target_concurrency(value)
    assert exc.value.param == "autoscaling.target_concurrency"


def test_target_concurrency_null_means_the_default_and_numbers_are_kept() -> None:
    assert validate_target_concurrency(None) is None
    assert validate_target_concurrency(3) == 3.0
    assert validate_target_concurrency(2.5) == 2.5


def test_min_above_max_is_refused_with_a_way_out() -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_autoscaling(3, 2)
    assert "(3)" in exc.value.message and "(2)" in exc.value.message
    assert "raise max_replicas or lower min_replicas" in exc.value.message
    assert exc.value.param == "autoscaling"


def test_max_replicas_above_the_cap_is_refused() -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_autoscaling(1, MAX_REPLICAS + 1)
    assert f"at most {MAX_REPLICAS}" in exc.value.message
    assert exc.value.param == "autoscaling.max_replicas"


@pytest.mark.parametrize("bad", [True, False, "2", 2.0, None, [2]])
def test_non_integer_min_replicas_is_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_autoscaling(bad, 4)
    assert "whole number" in exc.value.message
    assert repr(bad) in exc.value.message
    assert exc.value.param == "autoscaling.min_replicas"


@pytest.mark.parametrize("bad", [True, "4", 4.0, None])
def test_non_integer_max_replicas_is_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_autoscaling(1, bad)
    assert exc.value.param == "autoscaling.max_replicas"


def test_autoscaling_errors_are_not_retryable_400s() -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_autoscaling(-1, 1)
    assert exc.value.status == 400
    assert exc.value.should_retry is False


@given(st.integers(0, MAX_REPLICAS), st.integers(1, MAX_REPLICAS))
def test_any_ordered_pair_within_the_cap_is_accepted(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert validate_autoscaling(lo, hi) == Autoscaling(lo, hi)


# validate_inactive_timeout -----------------------------------------------------------------------


@pytest.mark.parametrize("never", [None, 0])
def test_zero_or_none_inactive_timeout_means_never(never: int | None) -> None:
    assert validate_inactive_timeout(never) is None


def test_positive_inactive_timeout_is_kept_in_minutes() -> None:
    assert validate_inactive_timeout(15) == 15


def test_negative_inactive_timeout_is_refused_with_a_way_out() -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_inactive_timeout(-5)
    assert "negative" in exc.value.message
    assert "0 or null" in exc.value.message
    assert exc.value.param == "inactive_timeout"


@pytest.mark.parametrize("bad", [True, False, "10", 1.5])
def test_non_integer_inactive_timeout_is_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="whole number of minutes"):
        validate_inactive_timeout(bad)


# validate_display_name ---------------------------------------------------------------------------


def test_display_name_is_stripped() -> None:
    assert validate_display_name("  my endpoint  ") == "my endpoint"


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_empty_display_name_is_none(empty: str | None) -> None:
    assert validate_display_name(empty) is None


def test_display_name_at_the_limit_is_accepted() -> None:
    name = "x" * MAX_DISPLAY_NAME
    assert validate_display_name(name) == name


def test_too_long_display_name_is_refused() -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_display_name("x" * (MAX_DISPLAY_NAME + 1))
    assert str(MAX_DISPLAY_NAME) in exc.value.message
    assert exc.value.param == "display_name"


@pytest.mark.parametrize("bad", [42, ["a"], {"a": 1}])
def test_non_string_display_name_is_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest):
        validate_display_name(bad)


# validate_owner ---------------------------------------------------------------------------------


@pytest.mark.parametrize("owner", ["alice", "a", "team-1", "0team", "a_b", "a" * 63])
def test_valid_owner_is_returned(owner: str) -> None:
    assert validate_owner(owner) == owner


@pytest.mark.parametrize("bad", ["", "Alice", "-alice", "_alice", "al ice", "al/ice", "a" * 64, 7, None])
def test_invalid_owner_is_refused_with_the_rule(bad: object) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_owner(bad)
    assert "lowercase letters, digits" in exc.value.message
    assert exc.value.param == "owner"


def test_owner_with_a_trailing_newline_is_refused() -> None:
    # `$` alone would match before a final newline; the whole string must match.
    with pytest.raises(InvalidRequest):
        validate_owner("alice\n")


# model_slug / names / ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "slug"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3-1-8b-instruct"),
        ("dedicate/tiny-chat", "tiny-chat"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2-5-7b-instruct"),
        ("plain", "plain"),
        ("org/--Weird__Name!!", "weird-name"),
        ("org/!!!", "model"),
        ("", "model"),
    ],
)
def test_model_slug_keeps_lowercase_letters_and_digits_of_the_last_part(model: str, slug: str) -> None:
    assert model_slug(model) == slug


def test_model_slug_is_at_most_40_characters() -> None:
    assert len(model_slug("org/" + "a" * 100)) == 40


@given(st.text())
def test_model_slug_is_always_a_url_safe_nonempty_word(model: str) -> None:
    slug = model_slug(model)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", slug)


def test_endpoint_name_is_owner_slash_slug_dash_eight_hex() -> None:
    name = new_endpoint_name("alice", "meta-llama/Llama-3.1-8B-Instruct")
    assert re.fullmatch(r"alice/llama-3-1-8b-instruct-[0-9a-f]{8}", name)


def test_endpoint_names_differ_between_calls() -> None:
    names = {new_endpoint_name("alice", "dedicate/tiny-chat") for _ in range(20)}
    assert len(names) == 20


def test_endpoint_id_is_endpoint_dash_uuid4() -> None:
    eid = new_endpoint_id()
    prefix, _, rest = eid.partition("-")
    assert prefix == "endpoint"
    assert uuid.UUID(rest).version == 4
    assert str(uuid.UUID(rest)) == rest
