"""What the benchmarks share: the request trace, percentiles, processes pinned to cores, free ports,
waiting, tools from apt and pip.

Not a benchmark itself: the scripts that import it each end with one line holding a JSON object of their
figures (a json line).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx

from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.records import Endpoint, Replica
from dedicate.domain.replicas import ReplicaFacts

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench"  # git-ignored: peer virtual environments, logs, temporary configs
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"


# the trace -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    at: float  # seconds from the trace's first request
    prompt_tokens: int
    output_tokens: int


def load_trace(path: Path = DEFAULT_TRACE) -> list[Request]:
    """TIMESTAMP,ContextTokens,GeneratedTokens rows, as seconds from the first request (sorted first)."""
    rows: list[tuple[datetime, int, int]] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            stamp = row["TIMESTAMP"].strip()
            head, _, frac = stamp.partition(".")
            at = datetime.fromisoformat(head + (f".{frac[:6]}" if frac else ""))
            rows.append((at, int(row["ContextTokens"]), max(1, int(row["GeneratedTokens"]))))
    if not rows:
        raise SystemExit(f"{path}: no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [Request((at - t0).total_seconds(), p, o) for at, p, o in rows]


def trace_slice(requests: Sequence[Request], start_s: float, length_s: float) -> list[Request]:
    """The requests of trace time [start, start + length), re-timed to start at 0."""
    return [Request(r.at - start_s, r.prompt_tokens, r.output_tokens)
            for r in requests if start_s <= r.at < start_s + length_s]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values; NaN for none."""
    if not sorted_values:
        return float("nan")
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cores() -> tuple[str, str]:
    """(load core, proxy core): the load generator and the backend on one, the proxy alone on the other."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return str(available[0]), str(available[0])
    return str(available[0]), str(available[1])


def pinned(core: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") else list(argv)


def ensure_apt(binary: str, package: str) -> str | None:
    """The path of ``binary``, installing Debian's ``package`` if needed; None (and why, on stderr) if that fails."""
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if found:
        return found
    print(f"installing {package} from Debian's packages ...", file=sys.stderr, flush=True)
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run(argv, capture_output=True, text=True,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0:
            print(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
            return None
    return shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)


def ensure_venv(name: str, requirement: str, probe: str) -> tuple[Path | None, str]:
    """A virtual environment under .bench/ with ``requirement`` installed; (its bin dir, "") or (None, why)."""
    venv = BENCH_DIR / name
    bin_dir = venv / "bin"
    marker = venv / ".installed"
    if marker.exists() and marker.read_text() == requirement and (bin_dir / probe).exists():
        return bin_dir, ""
    print(f"installing {requirement} into {venv} ...", file=sys.stderr, flush=True)
    if not (bin_dir / "python").exists():
        done = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"cannot create a venv: {done.stderr.strip()[-300:]}"
    done = subprocess.run([str(bin_dir / "pip"), "install", "-q", requirement], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
        return None, f"pip install {requirement} failed: {' '.join(lines)[-400:] or done.stderr[-400:]}"
    if not (bin_dir / probe).exists():
        return None, f"{requirement} installed no {probe}"
    marker.write_text(requirement)
    return bin_dir, ""


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
              ok: Sequence[int] = (200,)) -> str:
    """Poll ``url`` until it answers one of ``ok``; "" when it did, else why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"exited with {proc.returncode}"
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(url, timeout=2)
            if r.status_code in ok:
                return ""
            last = f"HTTP {r.status_code}"
        time.sleep(0.2)
    return f"not ready after {timeout:g} s ({last})"


@contextlib.contextmanager
def process(argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own group, killed (the whole group) on the way out."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(10)


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def bench_endpoint(name: str, owner: str) -> Endpoint:
    """A running endpoint record, as the control plane would have written it."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return Endpoint(
        id=f"endpoint-{name.replace('/', '-')}", name=name, owner=owner,
        model="dedicate/tiny-chat", hardware="1x_cpu", display_name=name, min_replicas=1, max_replicas=64,
        desired_replicas=1, inactive_timeout=None, disable_prompt_cache=False, disable_speculative_decoding=False,
        availability_zone=None, cents_per_minute=Decimal(0), intent=Intent.RUN, state=EndpointState.STARTED,
        state_changed_at=t0, status_message="", failures_before_ready=0, created_at=t0, updated_at=t0,
        deleted_at=None, version=1)


REPLICA_TOKEN = "bench-replica-token"


def bench_replica(replica_id: str, endpoint: Endpoint, port: int) -> Replica:
    """A ready replica record pointing at a server on 127.0.0.1:``port``."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    facts = ReplicaFacts(placed_at=t0, launched_at=t0, first_ready_at=t0, last_probe_ok_at=t0, probe_failures=0,
                         exit_code=None, stop_requested_at=None, stopped_at=None)
    return Replica(id=replica_id, endpoint_id=endpoint.id, engine="bench", node="local", slots="0",
                   token=REPLICA_TOKEN, port=port, pid=None, process_started=None, log_path=None,
                   created_at=t0, facts=facts, stop_reason=None, version=1)


def serve_gateway(port: int, data_dir: Path, model: str, backend_ports: Sequence[int]) -> None:
    """dedicate's gateway as `dedicate up` serves it, over a real SQLite store holding one endpoint.

    The endpoint's ready replicas are the servers on ``backend_ports``; the API key is written to
    ``data_dir/key``. Runs until killed.
    """
    import gc

    import uvicorn
    from fastapi import FastAPI

    from dedicate.control.auth import authenticate
    from dedicate.gateway.app import GatewayFront
    from dedicate.gateway.proxy import Gateway
    from dedicate.gateway.routing import RoutingTable
    from dedicate.settings import GatewaySettings
    from dedicate.store.db import make_engine, migrate
    from dedicate.store.repos import Store

    engine = make_engine(f"sqlite:///{data_dir / 'bench.db'}")
    migrate(engine)
    store = Store(engine)
    _, secret = store.create_key("bench", is_admin=False, name="bench", now=datetime.now(UTC))
    ep = bench_endpoint(model, "bench")
    store.insert_endpoint(ep, ("created", "bench"))
    for i, backend in enumerate(backend_ports):
        store.insert_replica(bench_replica(f"replica-bench{i:04d}", ep, backend))
    table = RoutingTable(lambda: (store.list_endpoints(), store.live_replicas()))
    gw = Gateway(table, lambda header: authenticate(store, header), GatewaySettings())
    app = FastAPI()
    app.state.gateway = gw
    (data_dir / "key").write_text(secret)
    gc.collect()
    gc.freeze()  # as `dedicate up` does: start-up objects never again scanned by the collector
    uvicorn.run(GatewayFront(app, gw), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off", backlog=4096, proxy_headers=False)


def start_gateway(stack: contextlib.ExitStack, work: Path, core: str, model: str,
                  backend_ports: Sequence[int]) -> tuple[str, str]:
    """Start ``serve_gateway`` in a child pinned to ``core``; (base url, API key). Raises if it does not come up."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "dedicate.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "serve-gateway", str(port), str(work), model,
            ",".join(str(p) for p in backend_ports)]
    proc = stack.enter_context(process(pinned(core, argv), log, cwd=ROOT))
    base = f"http://127.0.0.1:{port}"
    why = wait_http(base + "/nothing", 60, proc, ok=(404,))
    if why:
        raise RuntimeError(f"dedicate's gateway did not start: {why}\n{tail(log)}")
    return base, (work / "key").read_text().strip()


def start_synthetic(stack: contextlib.ExitStack, work: Path, core: str, name: str, model: str,
                    args: Sequence[str]) -> int:
    """One synthetic replica process pinned to ``core``; its port."""
    port_file = work / f"{name}.port"
    log = work / f"{name}.log"
    argv = [sys.executable, "-m", "dedicate.engines.synthetic", "--served-model-name", model, "--port", "0",
            "--port-file", str(port_file), "--replica-id", name, *args]
    proc = stack.enter_context(process(pinned(core, argv), log, env={"DEDICATE_REPLICA_TOKEN": REPLICA_TOKEN},
                                       cwd=ROOT))
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"synthetic replica {name} did not start:\n{tail(log)}")
        time.sleep(0.05)
    port = int(port_file.read_text())
    why = wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
    if why:
        raise RuntimeError(f"synthetic replica {name}: {why}\n{tail(log)}")
    return port


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "serve-gateway":
    serve_gateway(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], [int(p) for p in sys.argv[5].split(",")])
