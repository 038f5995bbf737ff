"""Crash drills: kill the server at each named failpoint, restart it, and check nothing is lost.

After every restart: the running replica processes equal the live replica rows equal the
desired count (no orphan, no duplicate), and every replica's ready-time facts are intact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dedicate.control.failpoints import EXIT_CODE
from dedicate.store.db import make_engine
from dedicate.store.repos import Store
from tests.e2e.harness import Server

CONFIG = """
[cpu]
slots = 0

[[nodes]]
name = "node-a"
gpu_type = "h100-80gb"
gpus = 8
engine = "synthetic"

[engines.synthetic]
startup_delay_s = 0.3
ttft_s = 0.01
tokens_per_s = 200

[timing]
reconcile_interval_s = 0.2
"""

BODY = {"model": "meta-llama/Llama-3.1-8B-Instruct", "hardware": "1x_nvidia_h100_80gb_sxm",
        "autoscaling": {"min_replicas": 4, "max_replicas": 4}}


def facts(server: Server) -> dict[str, dict[str, Any]]:
    """Every replica row's facts, read from the database while the server is down or up."""
    store = Store(make_engine(f"sqlite:///{server.data_dir / 'dedicate.db'}"))
    out = {}
    for ep in store.list_endpoints(None, include_deleted=True):
        for r in store.replicas_of(ep.id):
            out[r.id] = {"first_ready_at": r.facts.first_ready_at, "stopped_at": r.facts.stopped_at,
                         "stop_requested_at": r.facts.stop_requested_at, "status": r.status.value}
    store.engine.dispose()
    return out


def check_converged(server: Server, endpoint_id: str, want: int) -> None:
    with server.client() as c:
        live = c.get(f"/v1/endpoints/{endpoint_id}/replicas").json()["data"]
    processes = server.replica_processes()
    assert {r["id"] for r in live} == set(processes), "processes equal live replica rows: no orphan"
    assert len(processes) == want, "no duplicate, none missing"
    assert all(r["status"] == "ready" for r in live)


def ready_facts_intact(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    for rid, f in before.items():
        if f["first_ready_at"] is not None:
            assert after[rid]["first_ready_at"] == f["first_ready_at"], f"replica {rid} lost its ready time"


@pytest.mark.parametrize("failpoint", ["after_replica_row", "after_launch", "after_first_probe"])
def test_a_crash_during_scale_up_loses_nothing(make_server: Callable[..., Server], failpoint: str) -> None:
    s = make_server(config=CONFIG, env={"DEDICATE_FAILPOINTS": failpoint}).start()
    with s.client() as c:
        ep = c.post("/v1/endpoints", json=BODY).json()
    assert s.wait_exit(60) == EXIT_CODE, "the failpoint fired"
    before = facts(s)
    assert before, "the crash came after a replica row was written"

    s.extra_env = {}
    s.start()
    got = s.wait_state(ep["id"], {"STARTED"}, timeout=60)
    assert got["replicas"]["ready"] == 4
    check_converged(s, ep["id"], 4)
    after = facts(s)
    ready_facts_intact(before, after)
    if failpoint == "after_launch":
        # The process launched before the crash was adopted, not started a second time.
        launched_before = [rid for rid, f in before.items() if f["stopped_at"] is None]
        assert all(after[rid]["stopped_at"] is None for rid in launched_before)


def test_a_crash_after_a_stop_request_finishes_the_stop(make_server: Callable[..., Server]) -> None:
    s = make_server(config=CONFIG).start()
    with s.client() as c:
        ep = c.post("/v1/endpoints", json=BODY).json()
    s.wait_state(ep["id"], {"STARTED"}, timeout=60)
    s.kill()  # replicas keep running; the next server adopts them
    s.extra_env = {"DEDICATE_FAILPOINTS": "after_stop_request"}
    s.start()
    with s.client() as c:
        assert c.patch(f"/v1/endpoints/{ep['id']}", json={"state": "STOPPED"}).status_code == 200
    assert s.wait_exit(60) == EXIT_CODE
    before = facts(s)
    assert any(f["stop_requested_at"] for f in before.values())

    s.extra_env = {}
    s.start()
    s.wait_state(ep["id"], {"STOPPED"}, timeout=60)
    assert s.replica_processes() == {}, "every process stopped, none orphaned"
    after = facts(s)
    assert set(after) == set(before), "no replica was started while stopping"
    assert all(f["stopped_at"] is not None for f in after.values())
    ready_facts_intact(before, after)


def test_a_sigkill_mid_scale_up_converges_after_restart(make_server: Callable[..., Server]) -> None:
    s = make_server(config=CONFIG).start()
    with s.client() as c:
        ep = c.post("/v1/endpoints", json={**BODY, "autoscaling": {"min_replicas": 4, "max_replicas": 8}}).json()
        c.post(f"/v1/endpoints/{ep['id']}/scale", json={"replicas": 8})
    s.wait_state(ep["id"], {"STARTING", "STARTED"}, timeout=30)
    s.kill()
    before = facts(s)
    s.start()
    s.wait_for(ep["id"], lambda e: e["state"] == "STARTED" and e["replicas"]["ready"] == 8, "had 8 ready")
    check_converged(s, ep["id"], 8)
    ready_facts_intact(before, facts(s))
