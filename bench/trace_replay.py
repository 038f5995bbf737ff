"""Trace replay: the Azure LLM inference trace (2023, conversation) through dedicate's gateway to synthetic replicas.

Run from the repository root::

    .venv/bin/python bench/trace_replay.py [--speedup 4] [--duration 60] [--replicas 4]

Each row of ``../shared/traces/azure_llm_2023_conv.csv`` (TIMESTAMP,
ContextTokens, GeneratedTokens) becomes one streamed chat completion, sent at
its time in the trace divided by ``--speedup`` (open loop: a slow answer never
delays the next arrival), with a prompt of about ContextTokens tokens (the
synthetic engine counts four characters a token) and ``max_tokens`` =
GeneratedTokens (capped by ``--max-tokens``). The first ``--duration``
seconds of compressed trace are replayed (from ``--start``, in trace seconds).

The replicas are synthetic engines (``--max-streams`` at once, ``--tokens-per-s``
per stream, ``--ttft``) on one core with the load generator; the gateway runs
alone on the other. Printed: time to first token and end-to-end latency
percentiles, and errors by kind. The last line is one JSON object with the
figures. The trace is read by ``_common.load_trace``, as in the autoscaling benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_DIR,
    DEFAULT_TRACE,
    Request,
    cores,
    load_trace,
    percentile,
    start_gateway,
    start_synthetic,
    trace_slice,
)

from dedicate.gateway.upstream import Pool, UpstreamError

MODEL = "bench/trace"
# A content fragment with text in it (the first chunk of a stream carries the role and empty content).
TOKEN = re.compile(rb'"content":\s*"(?!")')


def select(rows: list[Request], start_s: float, speedup: float, duration_s: float) -> list[Request]:
    """The rows of trace time [start, start + duration × speedup), re-timed to start at 0 and compressed."""
    return [Request(r.at / speedup, r.prompt_tokens, r.output_tokens)
            for r in trace_slice(rows, start_s, duration_s * speedup)]


@dataclass
class Outcome:
    ttft_s: float | None
    total_s: float | None
    error: str | None
    tokens: int


async def replay(port: int, key: str, arrivals: list[Request], max_tokens: int, timeout_s: float = 300.0,
                 model: str = MODEL) -> list[Outcome]:
    """Send each arrival at its time (open loop); streamed, timing the first token and the end."""
    loop = asyncio.get_running_loop()
    pool = Pool()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {key}\r\n"
            "content-type: application/json\r\ncontent-length: ").encode()
    start = loop.time() + 0.5
    outcomes: list[Outcome] = []

    async def one(a: Request) -> None:
        await asyncio.sleep(max(0.0, start + a.at - loop.time()))
        body = json.dumps({"model": model, "stream": True, "max_tokens": max(1, min(a.output_tokens, max_tokens)),
                           "messages": [{"role": "user", "content": "x" * (4 * max(1, a.prompt_tokens - 4))}]})
        data = head + str(len(body)).encode() + b"\r\n\r\n" + body.encode()
        t0 = loop.time()
        ttft = None
        tokens = 0
        try:
            resp = await pool.request(("127.0.0.1", port), data, timeout_s)
            if resp.status != 200:
                rest = b""
                while chunk := await resp.read(timeout_s):
                    rest += chunk
                resp.close()
                code = json.loads(rest or b"{}").get("error", {}).get("code") if rest.startswith(b"{") else None
                outcomes.append(Outcome(None, None, f"HTTP {resp.status} {code or ''}".strip(), 0))
                return
            tail = b""
            while chunk := await resp.read(timeout_s):
                if ttft is None and b'"content"' in chunk:
                    ttft = loop.time() - t0
                tokens += len(TOKEN.findall(chunk))
                tail = (tail + chunk)[-256:]
            resp.close()
        except UpstreamError as exc:
            outcomes.append(Outcome(None, None, type(exc).__name__, tokens))
            return
        error = None if tail.endswith(b"data: [DONE]\n\n") and b'"error"' not in tail else "stream error"
        outcomes.append(Outcome(ttft, loop.time() - t0, error, tokens))

    await asyncio.gather(*(one(a) for a in arrivals))
    pool.close()
    return outcomes


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [o for o in outcomes if o.error is None]
    ttft = sorted(o.ttft_s for o in ok if o.ttft_s is not None)
    total = sorted(o.total_s for o in ok if o.total_s is not None)

    def pcts(values: list[float]) -> dict[str, float | None]:
        return {f"p{q}": (round(percentile(values, q) * 1000, 1) if values else None) for q in (50, 90, 99)}

    return {"requests": len(outcomes), "ok": len(ok), "errors": len(outcomes) - len(ok),
            "errors_by_kind": dict(Counter(o.error for o in outcomes if o.error)),
            "ttft_ms": pcts(ttft), "latency_ms": pcts(total), "tokens_out": sum(o.tokens for o in ok)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--speedup", type=float, default=4.0, help="time compression factor")
    parser.add_argument("--duration", type=float, default=60.0, help="wall seconds of compressed trace to replay")
    parser.add_argument("--start", type=float, default=0.0, help="trace second to start from")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--max-streams", type=int, default=32)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--ttft", type=float, default=0.1)
    parser.add_argument("--max-tokens", type=int, default=1024)
    a = parser.parse_args()
    if not a.trace.exists():
        print(f"the trace {a.trace} is missing")
        print(json.dumps({"error": f"missing trace {a.trace}"}))
        return 1
    arrivals = select(load_trace(a.trace), a.start, a.speedup, a.duration)
    load_core, proxy_core = cores()
    BENCH_DIR.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trace-", dir=BENCH_DIR))
    rate = len(arrivals) / a.duration if a.duration else 0.0
    end = a.start + a.duration * a.speedup
    print(f"{len(arrivals)} requests from {a.trace.name} (trace seconds {a.start:g}..{end:g}, x{a.speedup:g}: "
          f"{rate:.1f} req/s) to {a.replicas} synthetic replicas ({a.max_streams} streams, "
          f"{a.tokens_per_s:g} tok/s, ttft {a.ttft:g}s); gateway on core {proxy_core}, the rest on core {load_core}")
    with ExitStack() as stack:
        args = ["--max-streams", str(a.max_streams), "--tokens-per-s", str(a.tokens_per_s), "--ttft", str(a.ttft),
                "--max-queue", "100000", "--max-model-len", "1000000"]
        ports = [start_synthetic(stack, work, load_core, f"replica-{i}", MODEL, args) for i in range(a.replicas)]
        base, key = start_gateway(stack, work / "gateway", proxy_core, MODEL, ports)
        outcomes = asyncio.run(replay(int(base.rsplit(":", 1)[1]), key, arrivals, a.max_tokens))
    s = summarize(outcomes)
    print(f"requests {s['requests']}  ok {s['ok']}  errors {s['errors']} {s['errors_by_kind'] or ''}")
    print("time to first token ms  " + "  ".join(f"{k} {v}" for k, v in s["ttft_ms"].items()))
    print("end-to-end latency ms   " + "  ".join(f"{k} {v}" for k, v in s["latency_ms"].items()))
    print(json.dumps({**s, "speedup": a.speedup, "duration_s": a.duration, "replicas": a.replicas,
                      "rate_rps": round(rate, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
