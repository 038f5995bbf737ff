"""Fuzzing the management API with schemathesis, from dedicate's own ``/openapi.json``, against a real
server on loopback: every documented operation, with valid and with invalid inputs, as an admin.

What must hold for every request: no 5xx; the status code is one the document lists for the
operation; the content type and the body match the document (the error envelope too); a call without
the key, or with a key that is not one, is refused with 401. (Unknown query parameters are ignored,
as FastAPI and Together's API do, so schemathesis's "negative data is rejected" check, which expects
them refused, is not one of them.) Bounded (``FUZZ_EXAMPLES`` a mode and operation, 8 by default) so
it runs in the test command; set it higher for a longer run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ensure_resource_availability,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from tests.e2e.harness import FAST_CONFIG, Server

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "15"))
# The inference routes are the gateway's: fuzzed in test_fuzz_gateway with their own rules.
SKIP = {("POST", "/v1/chat/completions"), ("POST", "/v1/completions")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPEN = {("GET", "/healthz"), ("GET", "/v1/models")}  # the only operations a caller without a key may use


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[tuple[Server, Any]]:
    s = Server(tmp_path_factory.mktemp("fuzz") / "server", config=FAST_CONFIG, shared_models=tiny_model).start()
    try:
        # objects for the fuzzer to find: an endpoint (stopped) and a second owner
        with s.client() as c:
            c.post("/v1/endpoints", json={"model": "dedicate/tiny-chat", "hardware": "1x_cpu", "state": "STOPPED",
                                          "autoscaling": {"min_replicas": 1, "max_replicas": 1}})
            c.post("/v1/keys", json={"owner": "alice"})
        yield s, schemathesis.openapi.from_url(f"{s.url}/openapi.json")
    finally:
        s.cleanup()


def run_operation(s: Server, op: Any, mode: GenerationMode) -> list[str]:
    failures: list[str] = []
    session = requests.Session()
    headers = {"authorization": f"Bearer {s.admin_key}"}
    checks = CHECKS

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(mode), data=st.data())
    def one(case: Any, data: Any) -> None:
        sent = {k.lower(): v for k, v in (case.headers or {}).items()}
        if mode is GenerationMode.POSITIVE or "authorization" not in sent:
            case.headers = {**(case.headers or {}), **headers}
        try:
            case.call_and_validate(base_url=s.url, session=session, checks=checks, timeout=30)
            if (op.method.upper(), op.path) not in OPEN:  # the same request without the key, and with a bad one
                bare = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
                for auth in (None, "Bearer ddc_not-a-key"):
                    case.headers = {**bare, **({"authorization": auth} if auth else {})}
                    refused = case.call(base_url=s.url, session=session, timeout=30)
                    unrouted = refused.status_code == 404 and "no such path" in refused.text  # matches no route
                    assert refused.status_code == 401 or unrouted, \
                        f"{auth or 'no key'}: {refused.status_code} {refused.text[:200]}"
        except Exception as exc:  # each failure is reported with its case
            failures.append(f"{op.label} [{mode.value}]: {type(exc).__name__}: {str(exc)[:600]}")

    try:
        one()
    except Unsatisfiable:  # nothing about this operation can be made invalid (it takes no input)
        assert mode is GenerationMode.NEGATIVE, op.label
    return failures


def test_every_operation_answers_as_documented_to_valid_and_invalid_input(fuzzed: tuple[Server, Any]) -> None:
    s, schema = fuzzed
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIP:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += run_operation(s, op, mode)
        ran += 1
    assert ran >= 50, ran
    assert not failures, "\n\n".join(dict.fromkeys(failures))  # each distinct failure once
    assert s.proc is not None and s.proc.poll() is None, "the server is still up"


def baseline(s: Server) -> None:
    """One state to start from, through the API: no endpoint, route or fine-tune, no live key but the
    admin's, no quota and no budget."""
    with httpx.Client(base_url=s.url, headers={"authorization": f"Bearer {s.admin_key}"}, timeout=30) as c:
        def listed(path: str, **params: Any) -> list[dict[str, Any]]:
            r = c.get(path, params=params)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            data: list[dict[str, Any]] = r.json()["data"]
            return data

        for ep in listed("/v1/endpoints", all="true", limit=1000):
            c.delete(f"/v1/endpoints/{ep['id']}")
        for project in [p["id"] for p in listed("/v1/projects", limit=100)]:
            for route in listed(f"/v2/projects/{project}/endpoints", limit=500):
                c.delete(f"/v2/projects/{project}/endpoints/{route['id']}")
            for model in listed(f"/v2/projects/{project}/models"):
                c.delete(f"/v2/projects/{project}/models/{model['id']}")
        keys = listed("/v1/keys", all="true")
        admin = c.get("/v3/whoami").json()
        owners = {k["owner"] for k in keys}
        for k in keys:
            if k["revoked_at"] is None and k["id"] != admin["api_key"]["id"]:
                c.delete(f"/v1/keys/{k['id']}")
        for owner in owners:
            c.put(f"/v1/owners/{owner}/quota", json={"gpus": None})
            c.put("/v1/billing/budget", params={"owner": owner}, json={"monthly_cents": None})


def test_linked_calls_keep_what_they_made_and_deleted_things_stay_deleted(fuzzed: tuple[Server, Any]) -> None:
    """Schemathesis's stateful run over the links it infers from the document (create, then get, patch,
    scale, stop, delete what was created, then use it again): no 5xx, answers as documented, a created
    resource is there to get, a deleted one answers 404 from then on."""
    s, schema = fuzzed
    headers = {"authorization": f"Bearer {s.admin_key}"}

    class Linked(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": s.url, "headers": headers, "timeout": 30}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=[*CHECKS, use_after_free, ensure_resource_availability],
                                   transport_kwargs=kwargs)

        def teardown(self) -> None:
            baseline(s)  # each program starts from the same state, so what it draws does not depend on the last

    # Generation only (no replay, no shrinking): the server's state carries from one program to the next,
    # so a replayed prefix need not draw the same, which hypothesis would call a flaky strategy.
    Linked.TestCase.settings = settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=8, deadline=None,
                                        derandomize=True, database=None, phases=[Phase.generate],
                                        suppress_health_check=list(HealthCheck))
    baseline(s)
    Linked.TestCase().runTest()
    assert s.proc is not None and s.proc.poll() is None, "the server is still up"
