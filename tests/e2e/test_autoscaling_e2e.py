"""Autoscaling end to end: real servers, real synthetic-engine replicas on a declared 4 x H100 logical
node, load sent through the real gateway, which reports it (in flight, held) to the autoscaler.

Time that the policy measures (the 5 minute stabilisation window, the idle timeout) is moved with
the file clock (``DEDICATE_TEST_CLOCK_FILE``), never slept through: the server's clock stands
still unless a test moves it, so a window only ends when the test says so. Engines keep real
time (their token rate makes requests stay in flight for a few seconds).

These tests depend on the gateway writing its per-endpoint signals (in flight and held, every
``[gateway] signals_interval_s``) and holding requests for an endpoint with no ready replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dedicate.clock import FileClock
from tests.e2e.harness import Server

pytestmark = pytest.mark.e2e

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HW = "1x_nvidia_h100_80gb_sxm"
T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)

CONFIG = """
[cpu]
slots = 0

[[nodes]]
name = "node-a"
gpu_type = "h100-80gb"
gpus = 4
engine = "synthetic"

[engines.synthetic]
startup_delay_s = 0.3
ttft_s = 0.01
tokens_per_s = 20

[timing]
reconcile_interval_s = 0.2
probe_interval_s = 0  # every pass: these tests count probes by passes

[autoscaling]
interval_s = 0.3

[gateway]
signals_interval_s = 0.3
"""


class Clocked:
    """A server on the file clock, with helpers to drive it."""

    def __init__(self, server: Server, clock: FileClock) -> None:
        self.server = server
        self.clock = clock
        self.now = T0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.clock.set(self.now)

    def client(self) -> httpx.Client:
        return self.server.client()

    def create(self, min_r: int, max_r: int, **extra: Any) -> dict[str, Any]:
        auto = {"min_replicas": min_r, "max_replicas": max_r, **extra.pop("autoscaling", {})}
        with self.client() as c:
            resp = c.post("/v1/endpoints", json={"model": MODEL, "hardware": HW, "autoscaling": auto, **extra})
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def get(self, endpoint_id: str) -> dict[str, Any]:
        with self.client() as c:
            return dict(c.get(f"/v1/endpoints/{endpoint_id}").json())

    def wait(self, endpoint_id: str, pred: Callable[[dict[str, Any]], bool], what: str,
             timeout: float = 60.0) -> dict[str, Any]:
        return self.server.wait_for(endpoint_id, pred, what, timeout=timeout)

    def rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Read the server's own database (what it persisted, not what its API shows)."""
        with contextlib.closing(sqlite3.connect(self.server.data_dir / "dedicate.db", timeout=5)) as conn:
            return conn.execute(sql, args).fetchall()

    def until(self, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"never {what}\n{self.server.log_tail()}")
            time.sleep(0.1)

    def quiet(self, endpoint_id: str) -> None:
        """Wait until the gateway has reported the endpoint with nothing in flight or held, and no
        busier moment since its previous report. Before the test moves the clock: a report of the
        load that just ended, written after the jump, would count as load at the new time."""
        def reported_quiet() -> bool:
            rows = self.rows("SELECT in_flight, queued, peak_load FROM endpoint_signals WHERE endpoint_id = ?",
                             endpoint_id)
            return bool(rows) and all(r == (0, 0, 0) for r in rows)

        self.until(reported_quiet, f"reported {endpoint_id} quiet")

    def autoscaled_now(self, endpoint_id: str) -> None:
        """Wait for an autoscaling pass at the clock's present time (its stored window has an entry
        that late): what the endpoint shows after it is the policy's answer to now."""
        def seen() -> bool:
            (state,) = self.rows("SELECT autoscale_state FROM endpoints WHERE id = ?", endpoint_id)[0]
            window = json.loads(state or "{}").get("window", [])
            return any(t >= self.now.timestamp() for t, _ in window)

        self.until(seen, f"an autoscaling pass of {endpoint_id} at {self.now}")

    def events(self, endpoint_id: str, kind: str | None = None) -> list[str]:
        with self.client() as c:
            data = c.get(f"/v1/endpoints/{endpoint_id}/events").json()["data"]
        return [e["message"] for e in data if kind is None or e["kind"] == kind]

    def kinds(self, endpoint_id: str) -> list[str]:
        with self.client() as c:
            return [e["kind"] for e in c.get(f"/v1/endpoints/{endpoint_id}/events").json()["data"]]


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[Clocked]:
    clock_file = tmp_path / "clock"
    clock = FileClock(clock_file)
    clock.set(T0)
    s = Server(tmp_path / "server", env={"DEDICATE_TEST_CLOCK_FILE": str(clock_file)}, config=CONFIG)
    try:
        s.start()
        yield Clocked(s, clock)
    finally:
        s.cleanup()


def ready(n: int, desired: int | None = None, queued: int | None = None) -> Callable[[dict[str, Any]], bool]:
    def pred(e: dict[str, Any]) -> bool:
        r = e["replicas"]
        return (e["state"] == "STARTED" and r["ready"] == n and r["starting"] == 0 and r["stopping"] == 0
                and (desired is None or r["desired"] == desired) and (queued is None or r["queued"] == queued))
    return pred


class Load:
    """``n`` streamed chat completions kept in flight through the gateway, each ``tokens`` long."""

    def __init__(self, s: Clocked, name: str, n: int, tokens: int = 200) -> None:
        self.results: list[int] = []
        self.threads = [threading.Thread(target=self._one, args=(s, name, tokens), daemon=True) for _ in range(n)]

    def _one(self, s: Clocked, name: str, tokens: int) -> None:
        try:
            with s.client() as c, c.stream("POST", "/v1/chat/completions", timeout=120, json={
                    "model": name, "stream": True, "max_tokens": tokens,
                    "messages": [{"role": "user", "content": "hello"}]}) as resp:
                for _ in resp.iter_bytes():
                    pass
                self.results.append(resp.status_code)
        except httpx.HTTPError:
            self.results.append(-1)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.threads:
            t.join(180)


def test_load_scales_up_with_the_reason_then_down_after_the_window(clocked: Clocked) -> None:
    s = clocked
    ep = s.create(1, 3, autoscaling={"target_concurrency": 2})
    s.wait(ep["id"], ready(1), "started with one replica")
    with Load(s, ep["name"], 6, tokens=120) as load:  # 6 s each at 20 tokens/s
        got = s.wait(ep["id"], ready(3, desired=3), "scaled to 3 replicas under 6 requests in flight")
    assert load.results == [200] * 6
    scaled = s.events(ep["id"], "scaled")
    assert scaled and all(re.fullmatch(r"\d → \d: in-flight \d+( and \d+ held by the gateway)?"
                                       r"(, \d+ at the busiest since the last report,)? over target 2 "
                                       r"per replica", m) for m in scaled), scaled
    assert got["autoscaler"]["last_decision"]["to"] == 3
    assert got["autoscaling"]["target_concurrency"] == 2
    assert got["autoscaler"]["target_concurrency"]["source"] == "user"

    s.quiet(ep["id"])
    s.advance(120)
    s.autoscaled_now(ep["id"])
    assert s.get(ep["id"])["replicas"]["desired"] == 3, "held within the 5 minute window"
    s.advance(200)
    s.wait(ep["id"], ready(1, desired=1), "back to one replica after the window")
    assert s.events(ep["id"], "scaled")[-1] == "3 → 1: no traffic for 5 min; down to min_replicas 1"


def test_beyond_capacity_partial_then_queued_then_surplus_yields_to_a_queued_minimum(clocked: Clocked) -> None:
    s = clocked
    a = s.create(1, 8, autoscaling={"target_concurrency": 1})
    s.wait(a["id"], ready(1), "A started")
    with Load(s, a["name"], 8, tokens=80):
        s.wait(a["id"], ready(4, desired=8, queued=4), "A on all 4 slots with 4 queued")
        # The counts are derived at read time; the message is written by the next reconcile pass.
        got = s.wait(a["id"], lambda e: "4 of 8 replicas ready; 4 queued" in e["status_message"],
                     "its message caught up")
    assert got["state"] == "STARTED", "a scale-up that capacity cannot meet is no error"
    assert got["billing"]["burn_rate_cents_per_minute"] in ("22.40", "22.4", "22.400000"), \
        "billed for the 4 that run, not the queued"

    b = s.create(2, 2)  # the clock stands still: A's window keeps wanting 8
    s.wait(b["id"], ready(2), "B's minimum placed by A's surplus yielding")
    got = s.wait(a["id"], ready(2, desired=8, queued=6), "A down to 2 running, still wanting 8")
    assert len(s.events(a["id"], "yielded")) == 2
    assert all(b["name"] in m for m in s.events(a["id"], "yielded"))


def test_scale_to_zero_and_back_on_a_request_the_gateway_holds(clocked: Clocked) -> None:
    s = clocked
    ep = s.create(0, 2)
    got = s.wait(ep["id"], lambda e: e["state"] == "STARTED", "STARTED")
    assert got["replicas"] == {"desired": 0, "ready": 0, "starting": 0, "queued": 0, "stopping": 0}
    assert got["billing"]["burn_rate_cents_per_minute"] in ("0", "0.00", "0.000000")
    with s.client() as c:
        resp = c.post("/v1/chat/completions", timeout=60, json={
            "model": ep["name"], "max_tokens": 4, "messages": [{"role": "user", "content": "wake up"}]})
    assert resp.status_code == 200, resp.text
    assert s.events(ep["id"], "scaled")[0].startswith("0 → 1: in-flight 0 and 1 held by the gateway")
    assert s.kinds(ep["id"]).count("state") == 1, "PENDING → STARTED once, then STARTED all along"

    s.quiet(ep["id"])
    s.advance(301)
    got = s.wait(ep["id"], lambda e: e["replicas"]["desired"] == 0 and e["replicas"]["ready"] == 0
                 and e["replicas"]["stopping"] == 0, "scaled back to zero")
    assert got["state"] == "STARTED"
    assert s.events(ep["id"], "scaled")[-1].startswith("1 → 0: no traffic for 5 min; scaled to zero")


def test_idle_shutdown_survives_a_restart_and_start_brings_it_back(clocked: Clocked) -> None:
    s = clocked
    ep = s.create(1, 1, inactive_timeout=1)
    s.wait(ep["id"], ready(1), "started")
    s.advance(30)
    with s.client() as c:
        assert c.post("/v1/chat/completions", json={"model": ep["name"], "max_tokens": 2, "messages": [
            {"role": "user", "content": "hi"}]}).status_code == 200
    last_request = s.now
    # The gateway writes its signals, and with them the endpoint's last request time.
    s.until(lambda: s.rows("SELECT last_request_at FROM endpoints WHERE id = ?", ep["id"])[0][0] is not None,
            "the last request persisted")

    s.server.kill()  # a crash: the gateway's memory is gone; the database remembers, the replica runs on
    s.server.start()
    s.advance(45)  # 75 s after it started, 45 s after the last request
    s.wait(ep["id"], ready(1), "running again after the restart")
    time.sleep(1.5)
    assert s.get(ep["id"])["state"] == "STARTED", "not idle: the last request was 45 s ago"
    s.advance(30)
    got = s.wait(ep["id"], lambda e: e["state"] == "STOPPED", "stopped for idleness")
    (why,) = s.events(ep["id"], "idle")
    m = re.fullmatch(r"stopped: idle for 1 min \(last request at (\S+)Z; inactive_timeout 1 min\)", why)
    assert m, why
    # The gateway dates a request by the clock minus the seconds since it came (real seconds,
    # while this clock stands still): a second or two early.
    assert abs((datetime.fromisoformat(m[1] + "+00:00") - last_request).total_seconds()) <= 5
    assert got["inactive_timeout"] == 1 and got["name"] == ep["name"], "name and config kept"
    with s.client() as c:
        assert c.post(f"/v1/endpoints/{ep['id']}/start").status_code == 200
    s.wait(ep["id"], ready(1), "started again")


def test_cli_sets_target_concurrency_and_inactive_timeout(clocked: Clocked) -> None:
    s = clocked
    env = {**os.environ, "DEDICATE_URL": s.server.url, "DEDICATE_API_KEY": s.server.admin_key}

    def cli(*args: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "dedicate.cli.main", "endpoints", *args, "--json"], env=env,
                             text=True, capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    ep = cli("create", MODEL, "--hardware", HW, "--min-replicas", "0", "--max-replicas", "2",
             "--target-concurrency", "3", "--inactive-timeout", "15")
    assert ep["autoscaling"] == {"min_replicas": 0, "max_replicas": 2, "target_concurrency": 3}
    assert ep["inactive_timeout"] == 15
    ep = cli("update", ep["id"], "--target-concurrency", "0", "--inactive-timeout", "0")
    assert ep["autoscaling"] == {"min_replicas": 0, "max_replicas": 2}, "Together's shape when nothing is set"
    target = ep["autoscaler"]["target_concurrency"]
    assert (target["value"], target["source"]) == (16, "default"), "back to the engine's 16 streams"
    assert ep["inactive_timeout"] is None
