"""Gateway scaling benchmark: throughput through dedicate's gateway with 1, 2, 4 and 8 synthetic replicas.

Run from the repository root::

    .venv/bin/python bench/scaling.py [--duration 15]

Each synthetic replica's capacity is the bottleneck: ``--max-streams``
requests generate at once, each ``--tokens`` tokens at ``--tokens-per-s``
after ``--ttft`` (timers, not CPU), so N replicas can serve N times the load
without using more CPU. The load generator keeps 1.5 × N × max-streams
requests in flight (non-streamed chat completions) through the gateway,
which runs alone on the other core. Throughput is completed requests per
second over the measured window (after a warm-up); efficiency(N) is
throughput(N) / (N × throughput(1)). Target: ≥ 0.95 at 8 replicas.

The last line is one JSON object with ``efficiency`` keyed by replica count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH_DIR, cores, percentile, start_gateway, start_synthetic

from dedicate.gateway.upstream import Pool, UpstreamError

MODEL = "bench/scaling"
TARGET_EFFICIENCY_AT_8 = 0.95


def request_bytes(port: int, key: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> bytes:
    raw = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n").encode() + raw


async def closed_loop(port: int, data: bytes, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    """``concurrency`` clients, each sending the next request when its last one is answered."""
    loop = asyncio.get_running_loop()
    pool = Pool()
    start = loop.time()
    window = (start + warmup, start + warmup + duration)
    done: list[float] = []
    errors: list[str] = []

    async def client() -> None:
        while loop.time() < window[1]:
            t0 = loop.time()
            try:
                resp = await pool.request(("127.0.0.1", port), data, 120)
                while await resp.read(120):
                    pass
                resp.close()
            except UpstreamError as exc:
                errors.append(str(exc))
                continue
            t1 = loop.time()
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}")
            elif window[0] <= t1 <= window[1]:
                done.append(t1 - t0)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    pool.close()
    done.sort()
    return {"throughput_rps": len(done) / duration, "completed": len(done), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_ms": round(percentile(done, 50) * 1000, 1), "p99_ms": round(percentile(done, 99) * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1,2,4,8", help="replica counts to measure")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per count")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--tokens-per-s", type=float, default=64.0)
    parser.add_argument("--ttft", type=float, default=0.05)
    a = parser.parse_args()
    counts = [int(n) for n in a.counts.split(",")]
    load_core, proxy_core = cores()
    BENCH_DIR.mkdir(exist_ok=True)
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="scaling-", dir=BENCH_DIR))
    per_request = a.ttft + (a.tokens - 1) / a.tokens_per_s
    print(f"replica: {a.max_streams} streams x {a.tokens} tokens at {a.tokens_per_s:g}/s after {a.ttft:g}s "
          f"(~{per_request:.2f}s a request, capacity ~{a.max_streams / per_request:.1f} req/s); "
          f"replicas and load on core {load_core}, gateway on core {proxy_core}; {a.duration:g}s per count")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to thirty-two."}], "max_tokens": a.tokens}
    results: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack:
        engine_args = ["--max-streams", str(a.max_streams), "--tokens-per-s", str(a.tokens_per_s),
                       "--ttft", str(a.ttft), "--max-queue", "100000"]
        ports = [start_synthetic(stack, work, load_core, f"replica-{i}", MODEL, engine_args)
                 for i in range(max(counts))]
        for n in counts:
            with ExitStack() as run:
                base, key = start_gateway(run, work / f"gateway-{n}", proxy_core, MODEL, ports[:n])
                gw_port = int(base.rsplit(":", 1)[1])
                concurrency = int(1.5 * n * a.max_streams)
                r = asyncio.run(closed_loop(gw_port, request_bytes(gw_port, key, body), concurrency, a.warmup,
                                            a.duration))
            results[n] = r
            print(f"{n} replica(s): {r['throughput_rps']:7.2f} req/s  ({r['completed']} in {a.duration:g}s, "
                  f"{concurrency} in flight)  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  errors {r['errors']}"
                  + (f" ({r['first_error']})" if r["errors"] else ""), flush=True)
    base_rps = results[counts[0]]["throughput_rps"] / counts[0]
    efficiency = {str(n): round(r["throughput_rps"] / (n * base_rps), 3) if base_rps else None
                  for n, r in results.items()}
    print()
    for n, e in efficiency.items():
        print(f"efficiency at {n}: {e}")
    if "8" in efficiency:
        e8 = efficiency["8"]
        print(f"target ≥ {TARGET_EFFICIENCY_AT_8} at 8 replicas: "
              f"{'met' if e8 is not None and e8 >= TARGET_EFFICIENCY_AT_8 else 'MISSED'}")
    print(json.dumps({"efficiency": efficiency,
                      "throughput_rps": {str(n): round(r["throughput_rps"], 2) for n, r in results.items()},
                      "errors": {str(n): r["errors"] for n, r in results.items()},
                      "p99_ms": {str(n): r["p99_ms"] for n, r in results.items()},
                      "target_efficiency_at_8": TARGET_EFFICIENCY_AT_8}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
