"""Crash drills: kill the server at each named failpoint, restart it, and check nothing is lost.

After every restart: the running replica processes equal the live replica rows equal the
desired count (no orphan, no duplicate), and every replica's ready-time facts are intact.

Processes are counted from the operating system, one per pid carrying the server's instance
id, so a replica launched twice is two processes. While the server is down, each drill also
checks from the database and /proc that the work it interrupts was really in progress.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dedicate.control.failpoints import EXIT_CODE
from dedicate.store.db import make_engine
from dedicate.store.repos import Store
from tests.e2e.harness import EngineProcess, Server

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
probe_interval_s = 0  # every pass: these tests count probes by passes
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
                         "stop_requested_at": r.facts.stop_requested_at, "status": r.status.value,
                         "launched_at": r.facts.launched_at, "pid": r.pid,
                         "process_started": r.process_started}
    store.engine.dispose()
    return out


def check_converged(server: Server, endpoint_id: str, want: int) -> None:
    with server.client() as c:
        live = c.get(f"/v1/endpoints/{endpoint_id}/replicas").json()["data"]
    processes = server.replica_processes()
    assert {r["id"] for r in live} == set(processes), "processes equal live replica rows: no orphan"
    assert len(processes) == want, "no duplicate, none missing"
    assert all(r["status"] == "ready" for r in live)
    running = server.engine_processes()
    assert len(running) == want, f"one process per wanted replica, counted by pid: {running}"
    rows = {rid: f for rid, f in facts(server).items() if f["stopped_at"] is None}
    assert sorted(p.replica_id for p in running) == sorted(rows), "each live row has exactly one process"
    for p in running:
        assert (rows[p.replica_id]["pid"], rows[p.replica_id]["process_started"]) == (p.pid, p.started), \
            f"replica {p.replica_id}'s row records the process that runs it"


def identities(processes: list[EngineProcess]) -> set[tuple[int, str]]:
    """(pid, kernel start time) of each process: a pid reused by another process differs."""
    return {(p.pid, p.started) for p in processes}


def in_progress_at_the_kill(failpoint: str, rows: dict[str, dict[str, Any]],
                            running: list[EngineProcess]) -> set[str]:
    """Check, with the server down, that the work the failpoint interrupts was under way.

    Returns the ids of the replicas caught mid-work.
    """
    ids = [p.replica_id for p in running]
    assert len(ids) == len(set(ids)), f"no replica ran twice before the crash: {running}"
    assert set(ids) <= set(rows), "every process at the kill has its replica row"
    if failpoint == "after_replica_row":
        caught = {rid for rid, f in rows.items() if f["launched_at"] is None and f["pid"] is None}
        assert caught, "a replica row was written and not yet launched"
        assert not caught & set(ids), "no process runs for the row written just before the crash"
    elif failpoint == "after_launch":
        caught = {rid for rid in ids if rows[rid]["launched_at"] is None and rows[rid]["pid"] is None}
        assert caught, "a process of the instance runs whose launch was not recorded"
    elif failpoint == "after_first_probe":
        caught = {rid for rid, f in rows.items() if f["first_ready_at"] is not None}
        assert caught, "a first good probe was recorded"
        for rid in caught:
            assert (rows[rid]["pid"], rows[rid]["process_started"]) in identities(running), \
                f"ready replica {rid}'s recorded process runs"
    elif failpoint == "after_stop_request":
        caught = {rid for rid, f in rows.items() if f["stop_requested_at"] is not None and f["stopped_at"] is None}
        assert caught, "a replica was asked to stop and was not yet stopped"
        for rid in caught:
            assert (rows[rid]["pid"], rows[rid]["process_started"]) in identities(running), \
                f"replica {rid}'s process still ran: its stop was under way"
    else:
        raise AssertionError(f"no check for failpoint {failpoint}")
    return caught


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
    at_kill = s.engine_processes()
    caught = in_progress_at_the_kill(failpoint, before, at_kill)

    s.extra_env = {}
    s.start()
    got = s.wait_state(ep["id"], {"STARTED"}, timeout=60)
    assert got["replicas"]["ready"] == 4
    check_converged(s, ep["id"], 4)
    after = facts(s)
    ready_facts_intact(before, after)
    assert len(after) == 4, "every row written before the crash was carried on, none replaced"
    running = s.engine_processes()
    assert identities(at_kill) <= identities(running), "no process that ran at the kill was stopped or restarted"
    if failpoint == "after_replica_row":
        for rid in caught:
            assert after[rid]["stopped_at"] is None and after[rid]["launched_at"] is not None, \
                f"the row written before the crash, {rid}, was launched"
    if failpoint == "after_launch":
        # The process launched before the crash was adopted, not started a second time.
        launched_before = [rid for rid, f in before.items() if f["stopped_at"] is None]
        assert all(after[rid]["stopped_at"] is None for rid in launched_before)
        for p in at_kill:
            if p.replica_id in caught:
                assert (after[p.replica_id]["pid"], after[p.replica_id]["process_started"]) == (p.pid, p.started), \
                    f"replica {p.replica_id}'s row records the process launched before the crash"
                assert [q.pid for q in running if q.replica_id == p.replica_id] == [p.pid], \
                    f"replica {p.replica_id} runs once: the process launched before the crash"
    if failpoint == "after_first_probe":
        for rid in caught:
            assert (after[rid]["pid"], after[rid]["process_started"]) == \
                (before[rid]["pid"], before[rid]["process_started"]), f"ready replica {rid} kept its process"


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
    at_kill = s.engine_processes()
    in_progress_at_the_kill("after_stop_request", before, at_kill)
    assert len(at_kill) == 4, "the crash came before any replica was signalled"

    s.extra_env = {}
    s.start()
    s.wait_state(ep["id"], {"STOPPED"}, timeout=60)
    assert s.replica_processes() == {}, "every process stopped, none orphaned"
    assert s.engine_processes() == [], "no process of the instance runs, counted by pid"
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
    at_kill = s.engine_processes()
    ready_at_kill = [rid for rid, f in before.items() if f["first_ready_at"] is not None]
    assert len(ready_at_kill) < 8, "the kill came while the scale-up was still under way"
    s.start()
    s.wait_for(ep["id"], lambda e: e["state"] == "STARTED" and e["replicas"]["ready"] == 8, "had 8 ready")
    check_converged(s, ep["id"], 8)
    ready_facts_intact(before, facts(s))
    assert identities(at_kill) <= identities(s.engine_processes()), \
        "every process that ran at the kill was kept, none started twice"
