"""Gateway overhead benchmark: dedicate's gateway against no proxy, vllm-router and LiteLLM's proxy.

Run from the repository root (as root: it may apt-get nginx-light and wrk)::

    .venv/bin/python bench/gateway.py [--duration 5]

A static backend (nginx, one worker) serves a fixed chat completion and a
fixed SSE stream of 8 chunks; wrk (one thread) is the load generator; both
are pinned to one core. Each proxy under test runs alone on the other core,
in turn:

- ``direct``: no proxy, wrk talks to nginx;
- ``dedicate``: this repository's gateway as ``dedicate up`` serves it
  (its ASGI front over a FastAPI app, uvicorn with uvloop and httptools,
  a real SQLite store for the API key and the routing table), an endpoint whose
  one ready replica is the nginx backend;
- ``vllm-router`` (pip, in .bench/vllm-router) with nginx as its one worker;
- ``litellm`` (``litellm[proxy]``, in .bench/litellm) with nginx as an
  OpenAI-compatible ``api_base``.

Per proxy and payload (``json``: the non-streamed completion, ``sse``: the
stream) it measures requests per second at 64 connections and p50/p99 latency
at 1 and 64 connections. "Added" latency is the proxy's minus the direct one.
A peer that cannot be installed or run is reported with null figures and the
reason. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_DIR,
    cores,
    ensure_apt,
    ensure_venv,
    free_port,
    pinned,
    process,
    start_gateway,
    tail,
    wait_http,
)

VLLM_ROUTER = "vllm-router==0.1.17"
LITELLM = "litellm[proxy]==1.106.12"  # the newest release whose [proxy] extra installs from PyPI here
MODEL = "bench/chat"
TARGET_RPS_VS_VLLM_ROUTER = 0.4
TARGET_RPS_VS_LITELLM = 40.0
TARGET_ADDED_C1_VS_VLLM_ROUTER = 2.0

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
}, separators=(",", ":"))


def _sse() -> str:
    events = []
    for i, word in enumerate(["The", " quick", " brown", " fox", " jumps", " over", " the", " dog"]):
        delta: dict[str, Any] = {"content": word} if i else {"role": "assistant", "content": word}
        events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                       "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
                   "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}})
    return "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events) + "data: [DONE]\n\n"


def _nginx_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def nginx_conf(root: Path, json_port: int, sse_port: int) -> Path:
    """One worker, keep-alive; one port answers the fixed completion, the other the fixed stream."""
    conf = root / "nginx.conf"
    common = f"""
        location = /health {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
        location = /v1/models {{
            default_type application/json;
            return 200 '{{"object":"list","data":[{{"id":"{MODEL}","object":"model","created":0,"owned_by":"b"}}]}}';
        }}"""
    conf.write_text(f"""
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{json_port};{common}
        location / {{ default_type application/json; return 200 '{_nginx_escape(COMPLETION)}'; }}
    }}
    server {{
        listen 127.0.0.1:{sse_port};{common}
        location / {{ default_type text/event-stream; return 200 '{_nginx_escape(_sse())}'; }}
    }}
}}
""")
    return conf


# ---------------------------------------------------------------------------------------------- wrk


def wrk_script(root: Path, key: str | None, stream: bool) -> Path:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 16}
    if stream:
        body["stream"] = True
    path = root / f"post-{'sse' if stream else 'json'}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    path.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                    f'wrk.headers["Content-Type"] = "application/json"\n{auth}')
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(wrk: str, core: str, url: str, script: Path, connections: int, duration: float) -> dict[str, Any]:
    argv = pinned(core, [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s",
                         "-s", str(script), url])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    pcts = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors:.*", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or "50" not in pcts:
        raise RuntimeError(f"wrk printed no figures:\n{out[-800:]}")
    return {"rps": float(rps.group(1)), "p50_ms": _ms(pcts["50"]), "p99_ms": _ms(pcts["99"]),
            "requests": int(total.group(1)) if total else None,
            "errors": int(non2xx.group(1)) if non2xx else 0, "socket_errors": sock.group(0) if sock else ""}


# ---------------------------------------------------------------------------------------------- main


def check(url: str, key: str | None, stream: bool) -> str:
    """One request through the proxy: "" if it looks right, else what is wrong."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}],
                            "max_tokens": 16}
    if stream:
        body["stream"] = True
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.post(url, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:300]}"
    if stream and "[DONE]" not in r.text:
        return f"the stream did not end with [DONE]: {r.text[-200:]}"
    if not stream and "quick brown fox" not in r.text:
        return f"unexpected answer: {r.text[:200]}"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--only", nargs="*", help="proxies to run (default: all)")
    args = parser.parse_args()

    load_core, proxy_core = cores()
    nginx = ensure_apt("nginx", "nginx-light")
    wrk = ensure_apt("wrk", "wrk")
    if nginx is None or wrk is None:
        print("nginx and wrk are needed (apt-get install -y nginx-light wrk) and could not be installed")
        print(json.dumps({"error": "nginx or wrk missing", "proxies": {}}))
        return 1
    BENCH_DIR.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gateway-", dir=BENCH_DIR))
    print(f"load generator and backend on core {load_core}, proxy on core {proxy_core}; {args.duration:g} s per run")
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        ports = {"json": free_port(), "sse": free_port()}
        (work / "nginx").mkdir()
        conf = nginx_conf(work / "nginx", ports["json"], ports["sse"])
        ng = stack.enter_context(process(pinned(load_core, [nginx, "-c", str(conf), "-p", str(work / "nginx")]),
                                         work / "nginx.log"))
        why = wait_http(f"http://127.0.0.1:{ports['sse']}/health", 20, ng)
        if why:
            print(f"nginx did not start: {why}\n{tail(work / 'nginx.log')}")
            print(json.dumps({"error": f"nginx: {why}", "proxies": {}}))
            return 1
        for name in ("direct", "dedicate", "vllm-router", "litellm"):
            if args.only and name not in args.only:
                continue
            results[name] = run_proxy(name, work, ports, wrk, load_core, proxy_core, args.duration)
    return report(results)


def start_proxy(name: str, stack: ExitStack, work: Path, backend: int, core: str) -> tuple[str, str | None, str]:
    """Start one proxy; (base url, API key or None, "") or ("", None, why not)."""
    if name == "direct":
        return f"http://127.0.0.1:{backend}", None, ""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"{name}.log"
    if name == "dedicate":
        try:
            return (*start_gateway(stack, work / "dedicate", core, MODEL, [backend]), "")
        except RuntimeError as exc:
            return "", None, str(exc)
    if name == "vllm-router":
        bin_dir, why = ensure_venv("vllm-router", VLLM_ROUTER, "vllm-router")
        if bin_dir is None:
            return "", None, why
        proc = stack.enter_context(process(pinned(core, [
            str(bin_dir / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", f"http://127.0.0.1:{backend}", "--policy", "round_robin",  # power_of_two needs 2 workers
            "--prometheus-port", str(free_port()), "--log-level", "warning"]), log))
        why = wait_http(base + "/health", 90, proc)
        return (base, None, "") if not why else ("", None, f"{why}: {tail(log)}")
    if name == "litellm":
        bin_dir, why = ensure_venv("litellm", LITELLM, "litellm")
        if bin_dir is None:
            return "", None, why
        cfg = work / "litellm.yaml"
        cfg.write_text(f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{backend}/v1
      api_key: bench
litellm_settings:
  telemetry: false
""")
        master = "sk-bench-" + secrets.token_hex(32)  # it refuses to start without one; requests carry it
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
               "LITELLM_MASTER_KEY": master}
        proc = stack.enter_context(process(pinned(core, [
            str(bin_dir / "litellm"), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]), log, env=env, cwd=work))
        why = wait_http(base + "/health/liveliness", 180, proc)
        return (base, master, "") if not why else ("", None, f"{why}: {tail(log)}")
    raise ValueError(name)


def run_proxy(name: str, work: Path, ports: dict[str, int], wrk: str, load_core: str, proxy_core: str,
              duration: float) -> dict[str, Any]:
    """Both payloads through one proxy (started afresh per payload, its backend being that payload's port)."""
    started = time.monotonic()
    out: dict[str, Any] = {}
    for payload in ("json", "sse"):
        with ExitStack() as own:
            base, key, why = start_proxy(name, own, work / payload, ports[payload], proxy_core)
            if why:
                print(f"{name:12s} missing: {why}")
                return {"missing": why}
            url = base + "/v1/chat/completions"
            why = check(url, key, payload == "sse")
            if why:
                print(f"{name:12s} missing: a test request failed: {why}")
                return {"missing": f"a test request failed: {why}"}
            script = wrk_script(work, key, payload == "sse")
            run_wrk(wrk, load_core, url, script, 16, 1.0)  # warm-up: connections, caches
            c64 = run_wrk(wrk, load_core, url, script, 64, duration)
            c1 = run_wrk(wrk, load_core, url, script, 1, duration)
            out[payload] = {"c64": c64, "c1": c1}
        errors = c64["errors"] + c1["errors"]
        print(f"{name:12s} {payload:4s}  {c64['rps']:9.0f} req/s @64   p50/p99 @1 {c1['p50_ms']:7.3f}/"
              f"{c1['p99_ms']:7.3f} ms   p50/p99 @64 {c64['p50_ms']:7.3f}/{c64['p99_ms']:7.3f} ms"
              + (f"   {errors} non-2xx" if errors else "")
              + (f"   {c64['socket_errors']}" if c64["socket_errors"] else ""), flush=True)
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def report(results: dict[str, dict[str, Any]]) -> int:
    direct = results.get("direct", {})
    summary: dict[str, Any] = {"proxies": {}}
    for name, r in results.items():
        if "missing" in r:
            summary["proxies"][name] = {"rps": None, "added_p50_ms_c1": None, "added_p99_ms_c64": None,
                                        "missing": r["missing"]}
            continue
        entry: dict[str, Any] = {}
        for payload in ("json", "sse"):
            run = r[payload]
            base = direct.get(payload)
            suffix = "" if payload == "json" else "_sse"
            entry[f"rps{suffix}"] = round(run["c64"]["rps"], 1)
            entry[f"p50_ms_c1{suffix}"] = round(run["c1"]["p50_ms"], 3)
            entry[f"p99_ms_c64{suffix}"] = round(run["c64"]["p99_ms"], 3)
            entry[f"added_p50_ms_c1{suffix}"] = (round(run["c1"]["p50_ms"] - base["c1"]["p50_ms"], 3)
                                                 if base else None)
            entry[f"added_p99_ms_c64{suffix}"] = (round(run["c64"]["p99_ms"] - base["c64"]["p99_ms"], 3)
                                                  if base else None)
            entry[f"errors{suffix}"] = run["c64"]["errors"] + run["c1"]["errors"]
        summary["proxies"][name] = entry
    p = summary["proxies"]

    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = p.get(a, {}).get(key), p.get(b, {}).get(key)
        return round(x / y, 3) if x and y else None

    summary["rps_ratio_vs_vllm_router"] = ratio("dedicate", "vllm-router", "rps")
    summary["rps_ratio_vs_litellm"] = ratio("dedicate", "litellm", "rps")
    summary["rps_ratio_vs_vllm_router_sse"] = ratio("dedicate", "vllm-router", "rps_sse")
    summary["rps_ratio_vs_litellm_sse"] = ratio("dedicate", "litellm", "rps_sse")
    summary["added_p50_c1_ratio_vs_vllm_router"] = ratio("dedicate", "vllm-router", "added_p50_ms_c1")
    summary["targets"] = {"rps_ratio_vs_vllm_router": TARGET_RPS_VS_VLLM_ROUTER,
                          "rps_ratio_vs_litellm": TARGET_RPS_VS_LITELLM,
                          "added_p50_c1_ratio_vs_vllm_router": TARGET_ADDED_C1_VS_VLLM_ROUTER}
    print()
    for key, target, higher in (("rps_ratio_vs_vllm_router", TARGET_RPS_VS_VLLM_ROUTER, True),
                                ("rps_ratio_vs_litellm", TARGET_RPS_VS_LITELLM, True),
                                ("added_p50_c1_ratio_vs_vllm_router", TARGET_ADDED_C1_VS_VLLM_ROUTER, False)):
        value = summary[key]
        verdict = "n/a" if value is None else ("met" if (value >= target if higher else value <= target) else "MISSED")
        print(f"{key:36s} {value!s:>8}   target {'≥' if higher else '≤'} {target:g}   {verdict}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
