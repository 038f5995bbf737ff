"""What clients see, byte for byte: every management route's answer, errors included, against a snapshot.

The snapshot (``snapshots/wire.json``) was recorded from the server as it answered before the routes
took typed bodies; a change to it is a change on the wire, to be made on purpose. Random parts (ids,
names, secrets) are replaced by stable placeholders in order of first appearance. To record it again:
``DEDICATE_UPDATE_SNAPSHOT=1 pytest tests/api/test_wire_snapshot.py``, then read the diff.
"""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from dedicate.domain.records import Replica
from dedicate.domain.replicas import ReplicaFacts
from tests.api.conftest import App

SNAPSHOT = Path(__file__).parent / "snapshots" / "wire.json"
HEADERS = ("content-type", "x-should-retry", "retry-after")
RANDOM = [
    (re.compile(r"endpoint-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "endpoint"),
    (re.compile(r"key_[0-9a-f]{20}"), "key"),
    (re.compile(r"ddc_[A-Za-z0-9_\-]+"), "secret"),
    (re.compile(r"(?<=-)[0-9a-f]{8}(?=[\"\s;,'.]|$)"), "suffix"),
]

TINY = {"model": "dedicate/tiny-chat", "hardware": "1x_cpu", "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
DROP = object()  # a key left out of the body
LLAMA = {"model": "meta-llama/Llama-3.1-8B-Instruct", "hardware": "1x_nvidia_h100_80gb_sxm",
         "autoscaling": {"min_replicas": 1, "max_replicas": 2}}


class Recorder:
    def __init__(self, app: App) -> None:
        self.app = app
        self.seen: dict[str, str] = {}
        self.calls: list[dict[str, Any]] = []

    def normalise(self, text: str) -> str:
        for pattern, kind in RANDOM:
            text = pattern.sub(lambda m, kind=kind: self.placeholder(m.group(0), kind), text)  # type: ignore[misc]
        return text

    def placeholder(self, value: str, kind: str) -> str:
        if value not in self.seen:
            n = sum(p.startswith(f"<{kind}-") for p in self.seen.values()) + 1
            self.seen[value] = f"<{kind}-{n}>"
        return self.seen[value]

    def __call__(self, method: str, path: str, *, key: str | bool | None = True, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if key is not True:  # True: the admin key the client carries
            headers["authorization"] = "" if key in (None, False) else f"Bearer {key}"
        resp = self.app.client.request(method, path, headers=headers, **kwargs)
        self.calls.append({
            "call": self.normalise(f"{method} {path}" + (f" as {key}" if isinstance(key, str) else "")
                                   + ("" if key is not None else " without a key")),
            "status": resp.status_code,
            "headers": {h: resp.headers[h] for h in HEADERS if h in resp.headers},
            "body": self.normalise(resp.text),
        })
        return resp.json() if resp.content and resp.headers.get("content-type", "").startswith("application/json") \
            else None


def _exercise(app: App) -> list[dict[str, Any]]:
    call = Recorder(app)
    store, clock = app.parts.store, app.clock
    call("GET", "/healthz")
    call("GET", "/v1/hardware")
    call("GET", "/v1/hardware", params={"model": "dedicate/tiny-chat"})
    call("GET", "/v1/clusters/availability-zones")
    call("GET", "/v1/catalog/models")
    call("GET", "/v3/whoami")

    # endpoints: create (a dry run, a started one with every field, a stopped GPU one), read, change
    call("POST", "/v1/endpoints", params={"dry_run": "true"}, json=TINY)
    full = {**TINY, "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_concurrency": 2},
            "display_name": "  demo  ", "inactive_timeout": 10, "disable_prompt_cache": True,
            "disable_speculative_decoding": False, "state": "STARTED"}
    tiny = call("POST", "/v1/endpoints", json=full)
    clock.advance(1)
    gpu = call("POST", "/v1/endpoints", params={"availability_zone": "rack-2"}, json={**LLAMA, "state": "STOPPED"})
    clock.advance(1)
    call("POST", "/v1/endpoints", json={**TINY, "inactive_timeout": None, "hardware": "1x_cpu", "extra": 1})
    call("GET", "/v1/endpoints")
    call("GET", "/v1/endpoints", params={"mine": "false", "type": "dedicated", "usage_type": "on-demand"})
    call("GET", "/v1/endpoints", params={"type": "serverless"})
    call("GET", "/v1/endpoints", params={"mine": "True", "usage_type": "reserved"})
    path = f"/v1/endpoints/{tiny['id']}"
    call("GET", path)
    clock.advance(1)
    call("PATCH", path, json={"autoscaling": {"max_replicas": 2}, "display_name": "renamed"})
    call("PATCH", path, json={"autoscaling": {"target_concurrency": None}, "display_name": None,
                              "inactive_timeout": 0, "hardware": "1x_cpu"})
    call("POST", f"{path}/scale", json={"replicas": 2})
    clock.advance(1)
    call("POST", f"{path}/stop")
    clock.advance(1)
    call("POST", f"{path}/start")
    call("PATCH", f"/v1/endpoints/{gpu['id']}", json={"state": "STARTED"})

    # a replica with billed time and counted tokens, a queued minimum, an alert
    t = clock.now()
    store.insert_replica(Replica(
        id="r-b0211aefbdf0", endpoint_id=tiny["id"], engine="transformers", node="local", slots=(0,),
        token="tok", address=None, pid=None, process_started=None, log_path=None, created_at=t,
        facts=ReplicaFacts(placed_at=t, launched_at=t, first_ready_at=None, last_probe_ok_at=None,
                           probe_failures=0, exit_code=None, stop_requested_at=None, stopped_at=None),
        stop_reason=None, version=1))
    price = store.get_endpoint(tiny["id"]).cents_per_minute  # type: ignore[union-attr]
    for seconds in (0, 90):
        r = store.get_replica("r-b0211aefbdf0")
        assert r is not None
        now = t + timedelta(seconds=seconds)
        store.record_probe_ok(r, now, None, {"first_ready_at": r.facts.first_ready_at or now, "last_probe_ok_at": now},
                              owner="admin", hardware="1x_cpu", cents_per_minute=price, max_gap_s=300.0)
    clock.advance(90)
    store.write_signals("gw", clock.now(), [], [(tiny["id"], "admin", f"{clock.now():%Y-%m-%d}", 3, 40, 120)])
    ep = store.get_endpoint(gpu["id"])
    assert ep is not None
    store.update_endpoint(ep, clock.now(), None, queued_replicas=1, queue_position=1,
                          status_message="queued: position 1 for 1 replica(s) of 1x h100-80gb")
    store.add_alert("admin", "2026-11", 80, clock.now(), "4 of 5 cents spent in 2026-11 (80% of the budget)")
    call("GET", path)
    call("GET", f"{path}/replicas")
    call("GET", f"{path}/replicas", params={"all": "true"})
    call("GET", f"{path}/events")
    call("GET", "/v1/nodes")
    call("GET", "/v1/queue")
    call("GET", "/v1/models")

    # keys and owners
    alice = call("POST", "/v1/keys", json={"owner": "alice", "name": "laptop"})
    clock.advance(1)  # lists are ordered by creation time
    call("POST", "/v1/keys", json={"owner": "alice"})
    clock.advance(1)
    second = call("POST", "/v1/keys", key=alice["key"])
    call("GET", "/v1/keys", key=alice["key"])
    call("GET", "/v1/keys", params={"all": "true"})
    call("DELETE", f"/v1/keys/{second['id']}", key=alice["key"])
    call("GET", "/v1/owners/alice")
    call("PUT", "/v1/owners/alice/quota", json={"gpus": 4})
    call("PUT", "/v1/owners/alice/quota", json={"gpus": None})
    call("GET", "/v1/owners/alice", key=alice["key"])

    # billing
    call("GET", "/v1/billing/usage", params={"start": "2026-11-01T00:00:00Z"})
    call("GET", "/v1/billing/usage", params={"start": "2026-11-01T00:00:00", "end": "2026-11-28T00:00:00Z",
                                             "owner": "alice"})
    call("GET", "/v1/billing/invoices/2026-11")
    call("GET", "/v1/billing/budget")
    call("PUT", "/v1/billing/budget", json={"monthly_cents": 5000, "stop_at_limit": True})
    call("PUT", "/v1/billing/budget", json={"monthly_cents": "12.5"})
    call("PUT", "/v1/billing/budget", json={"monthly_cents": None}, params={"owner": "alice"})
    call("GET", "/v1/billing/budget", key=alice["key"])

    # mistakes: every one answers the error envelope
    call("POST", "/v1/endpoints", content=b"{not json", headers={"content-type": "application/json"})
    call("POST", "/v1/endpoints", json=[1, 2])
    call("POST", "/v1/endpoints", json="a string")
    call("POST", "/v1/endpoints", content=b"")
    call("POST", "/v1/endpoints", content=b"null", headers={"content-type": "application/json"})
    call("POST", "/v1/endpoints", content=json.dumps({**TINY, "state": "STOPPED"}).encode(),
         headers={"content-type": "text/plain"})
    call("POST", "/v1/endpoints", content=b"x" * ((1 << 20) + 1), headers={"content-type": "application/json"})
    for change in ({"hardware": DROP}, {"hardware": None}, {"hardware": ""}, {"hardware": "banana"}, {"hardware": 5},
                   {"hardware": "3x_nvidia_zz9_1gb_sxm"}, {"model": DROP}, {"model": None}, {"model": ""}, {"model": 7},
                   {"model": "acme/unknown-model"}, {"model": "meta-llama/Llama-3.1-8B-Instruct"},
                   {"autoscaling": DROP}, {"autoscaling": None}, {"autoscaling": 3},
                   {"autoscaling": {"min_replicas": 2, "max_replicas": 1}},
                   {"autoscaling": {"min_replicas": -1, "max_replicas": 1}},
                   {"autoscaling": {"min_replicas": "one", "max_replicas": 1}},
                   {"autoscaling": {"min_replicas": True, "max_replicas": 1}},
                   {"autoscaling": {"min_replicas": 1}}, {"autoscaling": {"min_replicas": 0, "max_replicas": 0}},
                   {"autoscaling": {"min_replicas": 1, "max_replicas": 65}},
                   {"autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_concurrency": 0}},
                   {"autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_concurrency": "4"}},
                   {"autoscaling": {"min_replicas": 64, "max_replicas": 64}},
                   {"inactive_timeout": -5}, {"inactive_timeout": "soon"}, {"inactive_timeout": 1.5},
                   {"display_name": "x" * 201}, {"display_name": 5}, {"state": "RUNNING"},
                   {"disable_prompt_cache": "yes"}, {"disable_speculative_decoding": 1},
                   {"availability_zone": "mars"}):
        body = {k: v for k, v in {**TINY, **change}.items() if v is not DROP}
        call("POST", "/v1/endpoints", json=body)
    call("POST", "/v1/endpoints", params={"availability_zone": "mars"}, json=TINY)
    call("POST", "/v1/endpoints", params={"dry_run": "perhaps"}, json=TINY)
    for patch in ({"autoscaling": {"min_replicas": 3}}, {"autoscaling": {"min_replicas": None}},
                  {"autoscaling": [1]}, {"autoscaling": {"target_concurrency": -2}},
                  {"hardware": "1x_nvidia_h100_80gb_sxm"}, {"hardware": 5}, {"state": "EXPLODED"}, {"state": None},
                  {"inactive_timeout": "soon"}, {"owner": "mallory"}, {"zeta": 1, "alpha": 2, "state": "STOPPED"},
                  {"display_name": ["x"]}, [1], "x"):
        call("PATCH", path, json=patch)
    call("PATCH", path, content=b"]]", headers={"content-type": "application/json"})
    call("PATCH", path, content=b"")
    call("POST", f"{path}/scale", json={"replicas": -1})
    call("POST", f"{path}/scale", json={"replicas": "2"})
    call("POST", f"{path}/scale", json={})
    call("POST", f"{path}/scale", content=b"")
    call("PUT", "/v1/owners/alice/quota", json={"gpus": -1})
    call("PUT", "/v1/owners/alice/quota", json={"gpus": True})
    call("PUT", "/v1/owners/alice/quota", json=[4])
    call("PUT", "/v1/owners/Not_Valid/quota", json={"gpus": 1})
    call("PUT", "/v1/owners/alice/quota", key=alice["key"], json={"gpus": 1})
    call("GET", "/v1/owners/admin", key=alice["key"])
    call("PUT", "/v1/billing/budget", json={"monthly_cents": "lots"})
    call("PUT", "/v1/billing/budget", json={"monthly_cents": -1})
    call("PUT", "/v1/billing/budget", json={"monthly_cents": "NaN"})
    call("PUT", "/v1/billing/budget", json={"monthly_cents": 1, "stop_at_limit": "yes"})
    call("PUT", "/v1/billing/budget", json=[1])
    call("PUT", "/v1/billing/budget", json={}, params={"owner": "admin"}, key=alice["key"])
    call("GET", "/v1/billing/usage", params={"start": "yesterday"})
    call("GET", "/v1/billing/usage", params={"start": "2026-11-20T00:00:00Z", "end": "2026-11-01T00:00:00Z"})
    call("GET", "/v1/billing/usage", params={"owner": "admin"}, key=alice["key"])
    call("GET", "/v1/billing/invoices/2026-13")
    call("POST", "/v1/keys", json={"owner": "Bad Owner"})
    call("POST", "/v1/keys", json={"name": 5})
    call("POST", "/v1/keys", json={"name": "x" * 201})
    call("POST", "/v1/keys", json=[1])
    call("POST", "/v1/keys", json={"owner": "bob"}, key=alice["key"])
    call("POST", "/v1/keys", json={"admin": True}, key=alice["key"])
    call("DELETE", "/v1/keys/key_nope")
    call("GET", "/v1/keys", params={"all": "maybe"})
    call("GET", "/v1/endpoints", params={"mine": "maybe"})
    call("GET", "/v1/endpoints", params={"type": "shared"})
    call("GET", "/v1/endpoints", params={"usage_type": "spot"})
    call("GET", f"{path}/replicas", params={"all": "2"})
    call("GET", "/v1/endpoints/endpoint-nope")
    call("GET", f"/v1/endpoints/{gpu['id']}", key=alice["key"])
    call("GET", "/v1/nodes", key=alice["key"])
    call("GET", "/v1/queue", key=alice["key"])
    call("GET", "/metrics", key=alice["key"])
    call("GET", "/v1/endpoints", key=None)
    call("GET", "/v1/endpoints", key="ddc_wrong")
    call("GET", "/v1/nothing-here")
    call("PUT", "/v1/endpoints")
    call("POST", "/v1/chat/completions", json={"model": "x/none", "messages": []})
    call("DELETE", path)
    call("DELETE", path)
    call("GET", "/v1/endpoints")
    return call.calls


def test_every_route_answers_as_the_snapshot_says(app: App) -> None:
    calls = _exercise(app)
    if os.environ.get("DEDICATE_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(calls, indent=1, ensure_ascii=False) + "\n")
    recorded = json.loads(SNAPSHOT.read_text())
    assert [c["call"] for c in calls] == [c["call"] for c in recorded]
    for got, want in zip(calls, recorded, strict=True):
        assert got == want, got["call"]
