"""Soak: steady streamed and plain traffic through a real server while its replicas are killed, hung and
restarted and the endpoint is scaled up and down; what failed, why, and whether anything leaked.

Run from the repository root::

    .venv/bin/python bench/soak.py [--duration 600] [--clients 16] [--fault-every 4] [--work .bench/soak]

It starts ``dedicate up`` (a real server, its reconciler, autoscaler and gateway) on a declared 8-GPU
node whose replicas are synthetic engines (real processes that stream tokens), creates one endpoint of
2..4 one-GPU replicas, and runs ``--clients`` closed-loop clients, half streaming, for ``--duration``
seconds. Every ``--fault-every`` seconds it does the next of: SIGKILL a replica; SIGSTOP one (hung: it
keeps its connections and answers nothing) and SIGCONT it 6 s later, if it still runs; scale the
endpoint to 4; scale it to 2.

Each request ends as one of: ``ok``; ``error_event`` (a stream that failed after its first byte and
said so in an error event, the documented way); ``no_ready_replica`` (503 while no replica was ready:
the gateway had nothing to retry on); ``retryable`` (any other 5xx or 429 before the first byte: the
gateway should have retried it elsewhere); ``truncated`` (a stream cut without ``[DONE]`` or an error
event); ``transport`` (the connection failed or hung past the client's timeout); ``other``.

It measures the server process's resident memory and open file descriptors after a warm-up and after
the load (once it has settled). Pass: no ``retryable``, ``truncated`` or ``transport`` request, memory
within 10 % of the warm-up figure, descriptors back to it. It prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH_DIR, wait_http

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HARDWARE = "1x_nvidia_h100_80gb_sxm"
CONFIG = """
[cpu]
slots = 0

[[nodes]]
name = "soak-node"
gpu_type = "h100-80gb"
gpus = 8
engine = "synthetic"

[engines.synthetic]
startup_delay_s = 0.5
ttft_s = 0.02
tokens_per_s = 200

[timing]
reconcile_interval_s = 0.5
probe_interval_s = 1.0
"""
HANG_S = 6.0
CLIENT_TIMEOUT_S = 60.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def replica_pids(instance: str) -> dict[str, int]:
    """Replica id -> pid of every live engine process of this server's instance (from the command lines)."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if state == "Z" or b"--instance" not in argv:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if words[words.index("--instance") + 1] == instance and "--replica-id" in words:
            found[words[words.index("--replica-id") + 1]] = int(proc.name)
    return found


async def client(c: httpx.AsyncClient, name: str, stream: bool, stop: asyncio.Event, outcomes: Counter[str],
                 why: Counter[str] | None = None) -> None:
    body = {"model": name, "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    while not stop.is_set():
        outcome, detail = await one(c, body, stream)
        outcomes[outcome] += 1
        if detail and why is not None:
            why[detail] += 1


async def one(c: httpx.AsyncClient, body: dict[str, Any], stream: bool) -> tuple[str, str]:
    """The request's outcome, and for a defect what it was (its status and the start of its answer)."""
    t0 = time.monotonic()
    try:
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            text = (await r.aread()).decode(errors="replace")
    except httpx.HTTPError as exc:
        return "transport", f"transport {type(exc).__name__} after {time.monotonic() - t0:.0f} s " + \
            ("(stream)" if stream else "(plain)")
    outcome = classify(r.status_code, text, stream)
    return outcome, "" if outcome in ("ok", "error_event", "no_ready_replica") else \
        f"{outcome} {r.status_code} {text[:160]}"


def classify(status: int, text: str, stream: bool) -> str:
    if status == 503 and ("no_ready_replica" in text or "no ready replica" in text):
        return "no_ready_replica"
    if status >= 500 or status == 429:
        return "retryable"
    if status != 200:
        return "other"
    if not stream:
        try:
            return "ok" if json.loads(text)["choices"][0]["message"]["content"] else "other"
        except (ValueError, KeyError, IndexError):
            return "truncated"
    if '"error"' in text:
        return "error_event"
    return "ok" if text.rstrip().endswith("data: [DONE]") else "truncated"


FAULTS = ("kill", "hang", "scale_up", "scale_down")


async def faults(base: str, key: str, endpoint_id: str, instance: str, stop: asyncio.Event, every_s: float,
                 done: Counter[str], rng: random.Random, kinds: list[str]) -> None:
    i = 0
    hung: list[asyncio.Task[None]] = []

    async def resume(pid: int) -> None:
        await asyncio.sleep(HANG_S)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30) as c:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
                break
            kind = kinds[i % len(kinds)]
            i += 1
            live = replica_pids(instance)
            if kind in ("kill", "hang") and live:
                pid = live[rng.choice(sorted(live))]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
                if kind == "hang":
                    hung.append(asyncio.ensure_future(resume(pid)))
            elif kind.startswith("scale"):
                await c.post(f"/v1/endpoints/{endpoint_id}/scale", json={"replicas": 4 if kind == "scale_up" else 2})
            done[kind] += 1
    await asyncio.gather(*hung)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--fault-every", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of load before the memory and descriptors are first read (default: a tenth of "
                         "--duration, at least 5 s): the allocator's working set is reached under load, not at rest")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"which faults, in turn (of {', '.join(FAULTS)})")
    ap.add_argument("--work", type=Path, default=BENCH_DIR / "soak")
    args = ap.parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    if unknown := set(args.faults) - set(FAULTS):
        ap.error(f"unknown faults: {', '.join(sorted(unknown))}")
    if args.warmup is None:
        args.warmup = max(5.0, args.duration / 10)
    work: Path = args.work
    data = work / f"data-{os.getpid()}"
    data.mkdir(parents=True, exist_ok=True)
    (data / "config.toml").write_text(CONFIG)
    env = {**os.environ, "DEDICATE_DATA_DIR": str(data), "DEDICATE_CONFIG": str(data / "config.toml"),
           "DEDICATE_PORT": "0"}
    log = open(data / "server.log", "wb")  # noqa: SIM115 - as long as the server runs
    server = subprocess.Popen([sys.executable, "-m", "dedicate.cli.main", "up"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    instance = ""
    try:
        deadline = time.monotonic() + 60
        while not (data / "port").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{(data / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        base = f"http://127.0.0.1:{(data / 'port').read_text().strip()}"
        if why := wait_http(f"{base}/healthz", 60, server):
            raise SystemExit(f"the server is not healthy: {why}")
        key = (data / "admin.key").read_text().strip()
        instance = (data / "instance-id").read_text().strip()
        figures = asyncio.run(soak(args, base, key, instance, server.pid))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(30)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        for pid in replica_pids(instance).values() if instance else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        log.close()
    print(json.dumps(figures))
    return figures


async def soak(args: argparse.Namespace, base: str, key: str, instance: str, pid: int) -> dict[str, Any]:
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as c:
        ep = (await c.post("/v1/endpoints", json={"model": MODEL, "hardware": HARDWARE,
                                                   "autoscaling": {"min_replicas": 2, "max_replicas": 4}})).json()
        deadline = time.monotonic() + 120
        while (await c.get(f"/v1/endpoints/{ep['id']}")).json()["state"] != "STARTED":
            if time.monotonic() > deadline:
                raise SystemExit("the endpoint did not start")
            await asyncio.sleep(0.2)
    # Idle connections are dropped by the client before the server's keep-alive (uvicorn's 5 s) can close
    # them under a request being sent: with both at 5 s, that race reads as a transport failure.
    limits = httpx.Limits(max_connections=args.clients * 2, max_keepalive_connections=args.clients * 2,
                          keepalive_expiry=2.0)
    outcomes: Counter[str] = Counter()
    done: Counter[str] = Counter()
    rng = random.Random(args.seed)
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=CLIENT_TIMEOUT_S, limits=limits) as c:
        warm_stop = asyncio.Event()
        warm = [asyncio.ensure_future(client(c, ep["name"], n % 2 == 0, warm_stop, Counter()))
                for n in range(args.clients)]
        await asyncio.sleep(args.warmup)  # pools, caches and the collector settle under load
        warm_stop.set()
        await asyncio.gather(*warm)
    await asyncio.sleep(2.0)
    before = {"rss_kb": rss_kb(pid), "fds": fds(pid)}
    stop = asyncio.Event()
    t0 = time.monotonic()
    why: Counter[str] = Counter()
    samples: list[list[int]] = []  # [seconds into the load, resident KiB]

    async def sample() -> None:
        while not stop.is_set():
            samples.append([round(time.monotonic() - t0), rss_kb(pid)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(1.0, args.duration / 20))

    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=CLIENT_TIMEOUT_S, limits=limits) as c:
        tasks = [asyncio.ensure_future(client(c, ep["name"], n % 2 == 0, stop, outcomes, why))
                 for n in range(args.clients)]
        chaos = asyncio.ensure_future(faults(base, key, ep["id"], instance, stop, args.fault_every, done, rng,
                                             args.faults))
        sampler = asyncio.ensure_future(sample())
        await asyncio.sleep(args.duration)
        stop.set()
        await asyncio.gather(*tasks, chaos, sampler)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(5.0)  # in-flight work drains, idle connections close
    after = {"rss_kb": rss_kb(pid), "fds": fds(pid)}
    sent = sum(outcomes.values())
    defects = {k: outcomes[k] for k in ("retryable", "truncated", "transport", "other")}
    memory_growth = (after["rss_kb"] - before["rss_kb"]) / max(1, before["rss_kb"])
    figures = {
        "duration_s": round(elapsed, 1), "clients": args.clients, "sent": sent,
        "requests_per_s": round(sent / elapsed, 1), "outcomes": dict(sorted(outcomes.items())),
        "faults": dict(sorted(done.items())), "rss_kb_before": before["rss_kb"], "rss_kb_after": after["rss_kb"],
        "memory_growth": round(memory_growth, 4), "fds_before": before["fds"], "fds_after": after["fds"],
        "rss_kb_during": samples, "defects": dict(why.most_common(10)),
        "passed": not any(defects.values()) and memory_growth <= 0.10 and after["fds"] <= before["fds"],
    }
    print(f"\n{sent} requests in {elapsed:.0f} s by {args.clients} clients ({figures['requests_per_s']}/s); "
          f"faults: {dict(done)}", file=sys.stderr)
    for k in ("ok", "error_event", "no_ready_replica", "retryable", "truncated", "transport", "other"):
        print(f"  {k:<18}{outcomes[k]:>8}", file=sys.stderr)
    for detail, n in why.most_common(10):
        print(f"    {n:>6} x {detail}", file=sys.stderr)
    print(f"  memory during the load (s, MiB): {[(t, round(kb / 1024, 1)) for t, kb in samples]}", file=sys.stderr)
    print(f"  server memory {before['rss_kb'] / 1024:.1f} -> {after['rss_kb'] / 1024:.1f} MiB "
          f"({memory_growth:+.1%}), descriptors {before['fds']} -> {after['fds']}; "
          f"{'PASS' if figures['passed'] else 'FAIL'}", file=sys.stderr)
    return figures


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
