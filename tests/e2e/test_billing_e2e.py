"""Billing through a real server, its real reconciler and a real replica, on the file clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dedicate.clock import FileClock
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
startup_delay_s = 3.0  # real seconds: the window in which the test moves the clock a minute

[timing]
reconcile_interval_s = 0.2
probe_interval_s = 0  # every pass: these tests count probes by passes
"""


def test_ninety_seconds_ready_bill_one_and_a_half_minutes_and_starting_is_free(
        make_server: Callable[..., Server], tmp_path: Path) -> None:
    clock_file = tmp_path / "clock"
    clock = FileClock(clock_file)
    t0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    clock.set(t0)
    s = make_server(config=CONFIG, env={"DEDICATE_TEST_CLOCK_FILE": str(clock_file)}).start()
    with s.client() as c:
        ep = c.post("/v1/endpoints", json={"model": "meta-llama/Llama-3.1-8B-Instruct",
                                          "hardware": "1x_nvidia_h100_80gb_sxm",
                                          "autoscaling": {"min_replicas": 1, "max_replicas": 1}}).json()
        # A minute passes while the replica starts (the engine takes a few real seconds to come up, and
        # the clock is moved meanwhile): billing from the launch would charge it, billing from the first
        # good probe does not.
        deadline = time.monotonic() + 30
        while True:
            live = c.get(f"/v1/endpoints/{ep['id']}/replicas").json()["data"]
            if live and live[0]["status"] != "ready":
                break
            assert not live or time.monotonic() < deadline, s.log_tail()
            time.sleep(0.05)
        launched = live[0]
        t0 = t0 + timedelta(minutes=1)
        clock.set(t0)
        s.wait_state(ep["id"], {"STARTED"})
        ready = c.get(f"/v1/endpoints/{ep['id']}/replicas").json()["data"][0]
        assert ready["id"] == launched["id"] and ready["first_ready_at"] == t0.isoformat().replace("+00:00", "Z")
        chat = c.post("/v1/chat/completions", json={"model": ep["name"], "max_tokens": 5,
                                                     "messages": [{"role": "user", "content": "hello"}]})
        assert chat.status_code == 200, chat.text
        sent = chat.json()["usage"]

        def probed_at(t: datetime) -> bool:
            live = c.get(f"/v1/endpoints/{ep['id']}/replicas").json()["data"]
            return bool(live) and live[0]["last_probe_ok_at"] == t.isoformat().replace("+00:00", "Z")

        for step in range(1, 10):  # nine steps of ten seconds, each seen by a probe
            now = t0 + timedelta(seconds=10 * step)
            clock.set(now)
            deadline = time.monotonic() + 30
            while not probed_at(now):
                assert time.monotonic() < deadline, s.log_tail()
                time.sleep(0.1)
        c.patch(f"/v1/endpoints/{ep['id']}", json={"state": "STOPPED"})
        s.wait_state(ep["id"], {"STOPPED"})
        clock.set(t0 + timedelta(minutes=30))  # time after the stop is never billed
        deadline = time.monotonic() + 30  # the gateway flushes its token counts every few seconds
        while True:
            usage = c.get("/v1/billing/usage", params={"start": "2026-11-01T00:00:00Z"}).json()
            if (usage["data"] and usage["data"][0]["tokens_out"]) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        invoice = c.get("/v1/billing/invoices/2026-11")
    (line,) = usage["data"]
    assert (line["requests"], line["tokens_in"], line["tokens_out"]) == (
        1, sent["prompt_tokens"], sent["completion_tokens"])
    assert line["replica_seconds"] == "90.000000"
    assert line["cents"] == "8"  # 1.5 minutes × 5.60 cents = 8.4 → 8
    assert invoice.status_code == 200 and json.loads(invoice.content)["total_cents"] == "8"

    env = {**os.environ, "DEDICATE_URL": s.url, "DEDICATE_API_KEY": s.admin_key}
    out = subprocess.run([sys.executable, "-m", "dedicate.cli.main", "billing", "usage", "--start",
                          "2026-11-01T00:00:00Z"], env=env, text=True, capture_output=True, timeout=60)
    assert out.returncode == 0 and "total: 8 cents" in out.stdout
