"""Every user mistake answers 4xx with the error envelope and a message that says what to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.harness import FAST_CONFIG, Server

GOOD = {"model": "dedicate/tiny-chat", "hardware": "1x_cpu", "autoscaling": {"min_replicas": 1, "max_replicas": 1}}


def envelope(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return dict(err)


@pytest.mark.parametrize(("change", "words"), [
    ({"hardware": None}, "hardware is required"),
    ({"hardware": ""}, "hardware is required"),
    ({"hardware": "3x_nvidia_zz9_1gb_sxm"}, "invalid hardware provided"),
    ({"hardware": "banana"}, "invalid hardware provided"),
    ({"model": "acme/unknown-model"}, "not supported"),
    ({"model": None}, "model is required"),
    ({"autoscaling": {"min_replicas": 2, "max_replicas": 1}}, "must not exceed"),
    ({"autoscaling": {"min_replicas": -1, "max_replicas": 1}}, "at least 0"),
    ({"autoscaling": {"min_replicas": "one", "max_replicas": 1}}, "whole number"),
    ({"autoscaling": None}, "autoscaling is required"),
    ({"inactive_timeout": -5}, "must not be negative"),
    ({"state": "RUNNING"}, "STARTED"),
    ({"model": "meta-llama/Llama-3.1-8B-Instruct"}, "not supported on hardware 1x_cpu"),
])
def test_bad_create_bodies_answer_400_with_a_helpful_message(
        server: Server, change: dict[str, Any], words: str) -> None:
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with server.client() as c:
        before = len(c.get("/v1/endpoints").json()["data"])
        err = envelope(c.post("/v1/endpoints", json=body), 400)
        assert words in err["message"]
        assert len(c.get("/v1/endpoints").json()["data"]) == before, "nothing was created"


def test_malformed_json_is_a_400(server: Server) -> None:
    with server.client() as c:
        err = envelope(c.post("/v1/endpoints", content=b"{not json",
                              headers={"content-type": "application/json"}), 400)
        assert "not valid JSON" in err["message"]
        envelope(c.post("/v1/endpoints", json=[1, 2]), 400)


def test_gpu_hardware_absent_here_is_hardware_unavailable_and_not_retried(
        make_server: Callable[..., Server]) -> None:
    # An installation with a GPU engine configured, but no GPU node: the shape can never run here.
    gpu_ready = make_server("gpu", config=FAST_CONFIG + '[engines]\nenabled = ["vllm"]\n').start()
    body = {**GOOD, "model": "meta-llama/Llama-3.1-8B-Instruct", "hardware": "1x_nvidia_h100_80gb_sxm"}
    with gpu_ready.client() as c:
        resp = c.post("/v1/endpoints", json=body)
    err = envelope(resp, 400)
    assert err["code"] == "hardware_unavailable"
    assert resp.headers["x-should-retry"] == "false"
    assert "Hardware for endpoint not available now. please try again later" in err["message"]


def test_min_replicas_beyond_the_whole_pool_is_hardware_unavailable(server: Server) -> None:
    body = {**GOOD, "autoscaling": {"min_replicas": 64, "max_replicas": 64}}
    with server.client() as c:
        resp = c.post("/v1/endpoints", json=body)
    err = envelope(resp, 400)
    assert err["code"] == "hardware_unavailable"
    assert "min_replicas of" in err["message"], "says what would fit now"


def test_unknown_ids_and_paths_are_404(server: Server) -> None:
    with server.client() as c:
        assert "not found" in envelope(c.get("/v1/endpoints/endpoint-nope"), 404)["message"]
        envelope(c.patch("/v1/endpoints/endpoint-nope", json={"state": "STOPPED"}), 404)
        envelope(c.delete("/v1/endpoints/endpoint-nope"), 404)
        envelope(c.get("/v1/nothing-here"), 404)


def test_missing_wrong_and_revoked_keys_are_401(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anon:
        assert "authentication" in envelope(anon.get("/v1/endpoints"), 401)["message"]
    with server.client("ddc_wrong") as c:
        envelope(c.get("/v1/endpoints"), 401)
    with server.client() as admin:
        made = admin.post("/v1/keys", json={"owner": "carol"}).json()
    with server.client(made["key"]) as carol:
        assert carol.get("/v1/endpoints").status_code == 200
        assert carol.delete(f"/v1/keys/{made['id']}").status_code == 200
        assert "revoked" in envelope(carol.get("/v1/endpoints"), 401)["message"]


def test_bad_patches_lose_nothing(server: Server) -> None:
    ep = server.create_tiny(state="STOPPED", autoscaling={"min_replicas": 1, "max_replicas": 2})
    with server.client() as c:
        path = f"/v1/endpoints/{ep['id']}"
        envelope(c.patch(path, json={"autoscaling": {"min_replicas": 3}}), 400)
        envelope(c.patch(path, json={"hardware": "1x_nvidia_h100_80gb_sxm"}), 400)
        envelope(c.patch(path, json={"state": "EXPLODED"}), 400)
        envelope(c.patch(path, json={"inactive_timeout": "soon"}), 400)
        envelope(c.patch(path, json={"owner": "mallory"}), 400)
        envelope(c.patch(path, content=b"]]", headers={"content-type": "application/json"}), 400)
        after = c.get(path).json()
        assert after["autoscaling"] == {"min_replicas": 1, "max_replicas": 2}
        assert after["hardware"] == "1x_cpu" and after["state"] == "STOPPED"
        merged = c.patch(path, json={"autoscaling": {"max_replicas": 3}}).json()
        assert merged["autoscaling"] == {"min_replicas": 1, "max_replicas": 3}
        assert c.delete(path).status_code == 204


def test_gateway_bad_requests_are_4xx(server: Server) -> None:
    with server.client() as c:
        envelope(c.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}), 400)
        envelope(c.post("/v1/chat/completions", json={"messages": []}), 400)
        envelope(c.post("/v1/completions", json={"model": 5}), 400)
        envelope(c.post("/v1/chat/completions", json={"model": "x/none"}), 404)
