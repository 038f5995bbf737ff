"""Graceful shutdown and restart; a SIGKILLed server adopts the replicas it left running."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import httpx

from tests.e2e.harness import Server


def _chat(server: Server, name: str) -> httpx.Response:
    with server.client() as c:
        return c.post("/v1/chat/completions", json={
            "model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})


def test_sigterm_stops_replicas_closes_their_facts_and_restart_runs_them_again(
        make_server: Callable[..., Server]) -> None:
    s = make_server().start()
    ep = s.create_tiny()
    s.wait_state(ep["id"], {"STARTED"})
    assert len(s.replica_processes()) == 1
    assert s.terminate() == 0
    assert s.replica_processes() == {}, "no replica outlives a graceful shutdown"

    s.start()
    with s.client() as c:
        events = c.get(f"/v1/endpoints/{ep['id']}/events").json()["data"]
    stopped = [e for e in events if e["kind"] == "stopped"]
    assert stopped, "the replica's stop was recorded"
    s.wait_state(ep["id"], {"STARTED"})
    assert len(s.replica_processes()) == 1
    assert _chat(s, ep["name"]).status_code == 200


def test_sigkill_then_restart_adopts_the_running_replica(make_server: Callable[..., Server]) -> None:
    s = make_server().start()
    ep = s.create_tiny()
    s.wait_state(ep["id"], {"STARTED"})
    before = s.replica_processes()
    assert len(before) == 1
    s.kill()
    ((_, pid),) = before.items()
    os.kill(pid, 0)  # still running without its server

    s.start()
    time.sleep(2.0)  # several reconcile passes (0.2 s each) at full speed
    assert s.replica_processes() == before, "adopted: no duplicate, no restart"
    got = s.wait_state(ep["id"], {"STARTED"})
    assert got["replicas"]["ready"] == 1
    resp = _chat(s, ep["name"])
    assert resp.status_code == 200, resp.text
    with s.client() as c:
        kinds = [e["kind"] for e in c.get(f"/v1/endpoints/{ep['id']}/events").json()["data"]]
    assert kinds.count("launched") == 1
    assert s.terminate() == 0
    assert s.replica_processes() == {}


def test_the_admin_key_is_created_once_with_mode_0600(make_server: Callable[..., Server]) -> None:
    s = make_server().start()
    key_file = s.data_dir / "admin.key"
    first = key_file.read_text()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    log = (s.data_dir / "server.log").read_text()
    assert "admin API key created: it is in" in log and str(key_file) in log
    assert first.strip() not in log, "the output is a log file, not a terminal: the secret stays out of it"
    s.terminate()
    s.start()
    assert key_file.read_text() == first
    assert (s.data_dir / "server.log").read_text().count("admin API key") == 1
