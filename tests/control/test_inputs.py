"""Typed inputs: however one is built, a bad value gets the domain's message, and a patch knows what it was given."""

from __future__ import annotations

import pytest

from dedicate.control.inputs import STOPPED, AutoscalingSpec, CreateEndpoint, EndpointPatch, NewKey, Scale
from dedicate.domain.errors import InvalidRequest

TINY = {"model": "dedicate/tiny-chat", "hardware": "1x_cpu", "autoscaling": {"min_replicas": 1, "max_replicas": 1}}


def test_a_bad_value_gets_the_domain_message_from_a_body_or_from_keywords() -> None:
    inverted = {"min_replicas": 2, "max_replicas": 1}
    for build in (lambda: CreateEndpoint.model_validate({**TINY, "autoscaling": inverted}),
                  lambda: CreateEndpoint(model="m", hardware="h", autoscaling=AutoscalingSpec(**inverted))):
        with pytest.raises(InvalidRequest, match="must not exceed") as exc:
            build()
        assert exc.value.param == "autoscaling"


def test_the_first_field_at_fault_answers_in_the_documented_order() -> None:
    with pytest.raises(InvalidRequest, match="model is required"):
        CreateEndpoint.model_validate({"hardware": 5})
    with pytest.raises(InvalidRequest, match="hardware is required"):
        CreateEndpoint.model_validate({"model": "m", "autoscaling": "x"})
    with pytest.raises(InvalidRequest, match="inactive_timeout") as exc:
        CreateEndpoint.model_validate({**TINY, "inactive_timeout": -1, "state": "RUNNING"})
    assert exc.value.param == "inactive_timeout"


def test_hardware_given_empty_is_left_to_the_catalog_after_the_model() -> None:
    # Together's CLI sends "" when no hardware is named; an unknown model must still say "not supported".
    assert CreateEndpoint.model_validate({**TINY, "hardware": ""}).hardware == ""


def test_create_defaults_and_normalises_like_the_api_always_did() -> None:
    req = CreateEndpoint.model_validate({**TINY, "display_name": "  demo ", "inactive_timeout": 0, "state": None,
                                         "availability_zone": "", "unknown": 1})
    assert (req.display_name, req.inactive_timeout, req.state, req.availability_zone) == ("demo", None, "STARTED", None)
    assert (req.disable_prompt_cache, req.disable_speculative_decoding) == (False, False)


def test_a_patch_knows_which_fields_it_was_given() -> None:
    patch = EndpointPatch.model_validate({"display_name": None, "autoscaling": {"max_replicas": 3}})
    assert patch.given("display_name") and not patch.given("inactive_timeout") and not patch.given("state")
    assert patch.autoscaling is not None and patch.autoscaling.bounds_given
    assert patch.autoscaling.model_fields_set == {"max_replicas"}, "min is merged with the stored bound"
    target_only = EndpointPatch.model_validate({"autoscaling": {"target_concurrency": None}}).autoscaling
    assert target_only is not None and not target_only.bounds_given
    assert "target_concurrency" in target_only.model_fields_set, "null resets to the default; absent keeps it"
    assert STOPPED.state == "STOPPED" and STOPPED.model_fields_set == {"state"}


def test_a_patch_refuses_null_where_an_object_or_a_state_is_needed() -> None:
    for body, param in (({"autoscaling": None}, "autoscaling"), ({"state": None}, "state"),
                        ({"hardware": None}, "hardware"), ({"autoscaling": {"min_replicas": None}},
                                                           "autoscaling.min_replicas")):
        with pytest.raises(InvalidRequest) as exc:
            EndpointPatch.model_validate(body)
        assert exc.value.param == param


def test_a_patch_refuses_what_cannot_be_updated_naming_what_can() -> None:
    with pytest.raises(InvalidRequest) as exc:
        EndpointPatch.model_validate({"zeta": 1, "owner": "x", "state": "STOPPED"})
    assert exc.value.message == ("cannot update owner, zeta; updatable fields are autoscaling, display_name, "
                                 "inactive_timeout, state")
    assert exc.value.param == "owner"


def test_a_body_is_a_json_object_whatever_its_content_type_said() -> None:
    assert Scale.model_validate(b'{"replicas": 2}').replicas == 2
    for raw, words in ((b"[1]", "must be a JSON object"), (b"", "must be a JSON object"),
                       (b"{x", "not valid JSON"), ("a string", "must be a JSON object")):
        with pytest.raises(InvalidRequest, match=words):
            Scale.model_validate(raw)


def test_a_key_request_defaults_to_the_callers_own_plain_key() -> None:
    assert NewKey() == NewKey.model_validate({}) == NewKey(owner=None, name=None, admin=False)
    with pytest.raises(InvalidRequest, match="admin must be true or false"):
        NewKey.model_validate({"admin": "yes"})
