"""Control-plane benchmark: reconcile passes, the endpoint API and memory as an installation grows.

Run from the repository root::

    .venv/bin/python bench/control_plane.py [--sizes 10,100,1000] [--backend sqlite|postgres] \
        [--passes 20] [--churn-rounds 5] [--requests 320] [--timeout-s 900] [--baseline-commit 9c2d987]

For each size N it builds, on the fake runtime and a real database, N endpoints of 10 one-GPU
replicas each (Llama-3.1-8B on ``1x_nvidia_h100_80gb_sxm``, over declared 8-GPU nodes) plus N
STOPPED endpoints, as a long-lived installation has, all created through ``POST /v1/endpoints``
and placed by reconcile passes until every replica is ready. Then it measures:

- an idle reconcile pass (nothing to do), over ``--passes`` passes, and how many probes it made
  (a tree that probes ready replicas on a cadence probes a share of them each pass);
- a pass after 5 % of the replicas died (``FakeRuntime.crash``), over ``--churn-rounds`` rounds,
  and the passes after it until every endpoint has its 10 ready replicas again (the recovery);
- ``GET /v1/endpoints`` (its default page) and ``GET /v1/endpoints/{id}`` under 32 concurrent
  clients in another process (plain HTTP/1.1 keep-alive connections on asyncio streams), after one
  untimed request a client;
- ``GET /healthz``, a route that does nothing, the same way: the floor that the app, uvicorn, the
  loopback and the load generator put under every figure of the API;
- ``POST /v1/endpoints`` one at a time, in the built installation;
- the resident memory of the server process.

Each tree runs in its own child process (``--driver``) with ``PYTHONPATH=<tree>/src``: the current
tree (the one this script is in) and, as the baseline, a git worktree of ``--baseline-commit``
under ``.bench/`` (or ``--baseline-tree``). The driver uses only what both trees have: settings
from a TOML config, ``server.build_parts`` and ``create_app`` (served by uvicorn without its
lifespan, so no loop of the app runs: the passes are driven one at a time), the fake runtime, a
probe that always answers healthy and a manual clock moved 1 s per pass. A size that runs past
``--timeout-s`` reports what it measured and null for the rest.

It prints a table per tree, the growth of each figure between the two largest sizes (100 → 1,000
by default: 10× is linear), the targets, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
WORK = ROOT / ".bench" / "control_plane"  # git-ignored: data directories, driver logs (--work), the baseline worktree

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HARDWARE = "1x_nvidia_h100_80gb_sxm"
GPU_TYPE = "h100-80gb"
REPLICAS_PER_ENDPOINT = 10
GPUS_PER_NODE = 8
CHURN_SHARE = 0.05
DEFAULT_BASELINE = "9c2d987"

# The targets at 1,000 endpoints / 10,000 replicas on a 2-core machine.
TARGETS: dict[str, float] = {
    "idle_pass_p99_ms": 250.0,
    "churn_pass_p99_ms": 1000.0,
    "recovery_pass_p99_ms": 1000.0,
    "list_p99_ms": 150.0,
    "get_p99_ms": 20.0,
    "rss_mb": 500.0,
}
TARGET_SIZE = 1000

# (key, label) of every figure, in the order printed; each is a p50/p99 pair of a sample, or a value.
SAMPLED = (("idle_pass", "idle pass"), ("churn_pass", "pass after 5 % died"),
           ("recovery_pass", "recovery passes"), ("list", "GET /v1/endpoints"),
           ("get", "GET /v1/endpoints/{id}"), ("create", "POST /v1/endpoints"),
           ("floor", "GET /healthz (the floor)"))
VALUES = (("rss_mb", "resident memory MB"), ("peak_rss_mb", "peak resident memory MB"),
          ("recovery_passes", "passes to recover"), ("list_page_size", "list page size"),
          ("build_s", "build s"), ("idle_probes_per_pass", "probes an idle pass"))


# the load generator: a child of the driver, stdlib only ---------------------------------------------
#
# A plain HTTP/1.1 keep-alive client on asyncio streams, one connection a client. httpx is not used
# here: its connection pool queues requests itself at 32 connections (a bare FastAPI route measured
# p50 100 ms through it and 2 ms through this), which would be the client's figure, not the server's.


class _Connection:
    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {key}\r\nAccept: application/json\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = b"" if body is None else json.dumps(body).encode()
        extra = f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n" if body is not None else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}{extra}\r\n".encode() + data)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if "content-length" in fields:
                payload = await self.reader.readexactly(int(fields["content-length"]))
            elif fields.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunks.append(await self.reader.readexactly(size + 2))
                    if size == 0:
                        break
                payload = b"".join(c[:-2] for c in chunks)
            else:
                payload = await self.reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.writer = None


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    base = urlsplit(spec["base"])
    concurrency = int(spec["concurrency"])
    jobs: list[tuple[str, str, Any]] = spec["jobs"]  # (method, path, body)
    warmup = int(spec.get("warmup", 0))  # the first jobs, whose latencies are not kept
    deadline = time.monotonic() + float(spec["max_s"])
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    created: list[str] = []
    shape: dict[str, Any] = {}
    position = 0

    async def worker() -> None:
        nonlocal position
        conn = _Connection(base.hostname or "127.0.0.1", base.port or 80, spec["key"])
        try:
            # One measured request a client at least, however short the time left.
            while position < len(jobs) and (position < warmup + concurrency or time.monotonic() < deadline):
                method, path, body = jobs[position]
                kept = position >= warmup
                position += 1
                t0 = time.perf_counter()
                try:
                    status, payload = await asyncio.wait_for(conn.request(method, path, body), 120)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                    continue
                if kept:
                    latencies.append((time.perf_counter() - t0) * 1000)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status != 200:
                    shape.setdefault("error", payload[:300].decode(errors="replace"))
                    continue
                if method == "POST":
                    created.append(json.loads(payload)["id"])
                elif not shape and path.rstrip("/").endswith("/endpoints"):
                    page = json.loads(payload)
                    shape.update(page_size=len(page.get("data", [])),
                                 keys=sorted(k for k in page if k not in ("object", "data")))
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies_ms": latencies, "statuses": statuses, "created": created, "shape": shape,
            "unsent": len(jobs) - position}


def load_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    print(json.dumps(asyncio.run(_load(spec))), flush=True)


# the driver: a child of the orchestrator, importing dedicate from the tree under test -------------


def rss_mb() -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of this process in MB."""
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) / 1024
    return found.get("VmRSS"), found.get("VmHWM")


def node_config(size: int) -> str:
    nodes = -(-size * REPLICAS_PER_ENDPOINT // GPUS_PER_NODE)
    lines = ["[cpu]", "slots = 0", "", "[timing]", "reconcile_interval_s = 1.0", ""]
    for i in range(nodes):
        lines += ["[[nodes]]", f'name = "n{i:05d}"', f'gpu_type = "{GPU_TYPE}"', f"gpus = {GPUS_PER_NODE}",
                  'engine = "synthetic"', ""]
    return "\n".join(lines)


def endpoint_body(state: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "hardware": HARDWARE,
                            "autoscaling": {"min_replicas": REPLICAS_PER_ENDPOINT,
                                            "max_replicas": REPLICAS_PER_ENDPOINT}}
    if state == "STOPPED":
        body["state"] = "STOPPED"
    return body


class Budget:
    """The driver's own deadline, shared out between the phases so a slow tree still reports."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def share(self, fraction: float) -> float:
        return max(0.0, self.left() * fraction)


async def _drive(opts: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    import gc
    import inspect
    import random
    import socket
    from datetime import UTC, datetime

    import uvicorn

    import dedicate
    from dedicate import server as srv
    from dedicate.clock import ManualClock
    from dedicate.control.reconciler import Reconciler
    from dedicate.runtimes.fake import FakeRuntime
    from dedicate.settings import load_settings

    size = int(opts["size"])
    budget = Budget(float(opts["budget_s"]))
    t_start = time.monotonic()

    def say(message: str) -> None:  # progress, to the driver's log
        print(f"{time.monotonic() - t_start:8.1f} s  {message}", file=sys.stderr, flush=True)

    def note(message: str) -> None:
        emit({"note": message})
        say(message)

    rng = random.Random(int(opts["seed"]))
    emit({"dedicate": dedicate.__file__, "endpoints": size, "stopped_endpoints": size,
          "replicas": size * REPLICAS_PER_ENDPOINT})

    data_dir = Path(opts["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.toml").write_text(node_config(size))
    settings = load_settings({"DEDICATE_CONFIG": str(data_dir / "config.toml"),
                              "DEDICATE_DATA_DIR": str(data_dir), "DEDICATE_DATABASE_URL": opts["database_url"],
                              "DEDICATE_PORT": "0"})

    class IndexedFakeRuntime(FakeRuntime):
        """The fake runtime, found by replica id in one look-up, so its own scans stay out of the figures."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.by_replica: dict[str, int] = {}

        def launch(self, spec: Any) -> Any:
            handle = super().launch(spec)
            self.by_replica[spec.replica_id] = handle.pid
            return handle

        def port_of(self, replica_id: str) -> int | None:
            p = self.processes.get(self.by_replica.get(replica_id, -1))
            return None if p is None else p.port

        if hasattr(FakeRuntime, "address_of"):  # the runtime reports addresses (the baseline has port_of)
            def address_of(self, replica_id: str) -> Any:
                from dedicate.domain.records import Address

                p = self.processes.get(self.by_replica.get(replica_id, -1))
                return None if p is None or p.port is None else Address(self.host, p.port)

        def crash(self, replica_id: str, code: int = 1) -> None:
            p = self.processes.get(self.by_replica.get(replica_id, -1))
            if p is not None and p.running:
                p.running, p.exit_code = False, code

    probes = [0]  # probes made, so the figures say how many a pass made

    async def healthy(port: int) -> bool:
        probes[0] += 1
        return True

    takes_probe = "probe" in inspect.signature(Reconciler.__init__).parameters

    class BenchReconciler(Reconciler):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if takes_probe:
                kwargs.setdefault("probe", healthy)
            super().__init__(*args, **kwargs)
            if not takes_probe:
                self._probe_port = healthy

    def fake_runtime(*args: Any, **kwargs: Any) -> FakeRuntime:
        nodes = kwargs.get("nodes", args[-1] if args else [])
        return IndexedFakeRuntime(list(nodes))

    # build_parts wires the fake runtime and the always-healthy probe wherever it uses them.
    srv.LocalRuntime = fake_runtime  # type: ignore[assignment, misc]
    srv.Reconciler = BenchReconciler  # type: ignore[misc]
    clock = ManualClock(datetime.now(UTC))
    parts = srv.build_parts(settings, clock)
    rec = parts.reconciler
    runtime = parts.runtime
    if not isinstance(runtime, IndexedFakeRuntime) or not isinstance(rec, BenchReconciler) \
            or rec.runtime is not runtime:
        raise RuntimeError("build_parts did not take the fake runtime and the bench reconciler: "
                           "this tree cannot be driven")
    store = parts.store
    secret = srv.ensure_admin_key(store, settings.data_dir, clock) if hasattr(srv, "ensure_admin_key") else None
    if secret is None:
        _, secret = store.create_key("admin", is_admin=True, name="bench", now=clock.now())
    app = srv.create_app(parts)
    if hasattr(srv, "tune_collector"):
        srv.tune_collector()  # as `dedicate up` does before it serves
    else:
        gc.collect()
        gc.freeze()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # lifespan off: the app's own loops (reconciler, autoscaler, signals) never start.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)

    async def load(jobs: list[tuple[str, str, Any]], concurrency: int, max_s: float,
                   warmup: int = 0) -> dict[str, Any]:
        spec = data_dir / "load.json"
        spec.write_text(json.dumps({"base": base, "key": secret, "jobs": jobs, "concurrency": concurrency,
                                    "max_s": max_s, "warmup": warmup}))
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--load", str(spec), stdout=asyncio.subprocess.PIPE)
        out, _ = await child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"the load generator exited with {child.returncode}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        bad = {s: n for s, n in result["statuses"].items() if s != "200"}
        if bad:
            emit({"errors": {**bad, "first": result["shape"].get("error", "")}})
        return result

    async def one_pass() -> float:
        clock.advance(1.0)
        t0 = time.perf_counter()
        await rec.pass_once()
        await rec.settle()
        return (time.perf_counter() - t0) * 1000

    def converged() -> bool:
        """Every running endpoint STARTED, and all its replicas, and only those, ready."""
        live = store.live_replicas()
        started = all(e.state.value == "STARTED" for e in store.list_endpoints() if e.intent.value == "RUN")
        return started and len(live) == size * REPLICAS_PER_ENDPOINT and \
            all(r.status.value == "ready" for r in live)

    def fits(estimate_s: float, within_s: float) -> bool:
        return estimate_s * 1.2 <= within_s

    try:
        # build: the endpoints through the API, then passes until every replica is ready
        emit({"phase": "build"})
        t_build = time.perf_counter()
        bodies = [endpoint_body(state) for _ in range(size) for state in ("STARTED", "STOPPED")]
        made = await load([("POST", "/v1/endpoints", b) for b in bodies], 4, budget.share(0.5))
        if len(made["created"]) != len(bodies):
            raise RuntimeError(f"created {len(made['created'])} of {len(bodies)} endpoints")
        live_ids = made["created"][0::2]
        build_passes: list[float] = []
        while not converged():
            if len(build_passes) >= 60 or budget.left() < 0:
                raise RuntimeError(f"not converged after {len(build_passes)} passes")
            build_passes.append(await one_pass())
            say(f"build pass {len(build_passes)}: {build_passes[-1]:.0f} ms")
        rss, _ = rss_mb()
        emit({"build_s": round(time.perf_counter() - t_build, 2), "build_passes": len(build_passes),
              "build_pass_max_ms": round(max(build_passes), 1),
              "rss_mb": None if rss is None else round(rss, 1)})  # again at the end, if it gets there
        # what the creations at the end need, kept out of the other phases' shares
        made_ms = sorted(made["latencies_ms"])
        reserve_s = 5 + 3 * int(opts["creates"]) * made_ms[len(made_ms) // 2] / 1000

        # the API under 32 concurrent clients (no pass runs meanwhile)
        emit({"phase": "list and get"})
        requests, concurrency = int(opts["requests"]), int(opts["concurrency"])
        # each after one request a client not timed: connections open, caches and thread pool warm
        listed = await load([("GET", "/v1/endpoints", None)] * (concurrency + requests), concurrency,
                            (budget.left() - reserve_s) * 0.1, warmup=concurrency)
        emit({"list": listed["latencies_ms"], "list_page_size": listed["shape"].get("page_size"),
              "list_page_keys": listed["shape"].get("keys")})
        gets = [("GET", f"/v1/endpoints/{rng.choice(live_ids)}", None) for _ in range(concurrency + requests)]
        got = await load(gets, concurrency, (budget.left() - reserve_s) * 0.05, warmup=concurrency)
        emit({"get": got["latencies_ms"]})
        # the floor: a route that does nothing, through the same app, clients and connections
        floor = await load([("GET", "/healthz", None)] * (concurrency + requests), concurrency,
                           (budget.left() - reserve_s) * 0.05, warmup=concurrency)
        emit({"floor": floor["latencies_ms"]})
        if len(listed["latencies_ms"]) < requests or len(got["latencies_ms"]) < requests:
            note(f"list and get were cut to {len(listed['latencies_ms'])} and {len(got['latencies_ms'])} "
                 f"of {requests} requests by --timeout-s")

        # the idle pass: nothing to do (more while they fit in the phase's share)
        emit({"phase": "idle pass"})
        share = (budget.left() - reserve_s) * 0.35
        # the last build pass probed every replica: no idle pass should take longer
        t0, idle = time.monotonic(), []
        probes_before = probes[0]
        while len(idle) < int(opts["passes"]) and \
                (fits(build_passes[-1] / 1000, budget.left() - reserve_s) if not idle
                 else fits(idle[-1] / 1000, share - (time.monotonic() - t0))):
            idle.append(await one_pass())
            say(f"idle pass {len(idle)}: {idle[-1]:.0f} ms")
        emit({"idle_pass": idle,
              "idle_probes_per_pass": round((probes[0] - probes_before) / len(idle), 1) if idle else None})
        if len(idle) < int(opts["passes"]):
            note(f"{len(idle)} of {opts['passes']} idle passes fitted in --timeout-s")

        # 5 % of the replicas die: the pass that finds them, then the passes until all are back
        emit({"phase": "churn"})
        churn: list[float] = []
        recovery: list[float] = []
        rounds: list[int] = []
        cut = False
        while len(churn) < int(opts["churn_rounds"]) and not cut:
            # each pass of a round is about as long as an idle one: start a round only if its first pass fits
            if not idle or not fits(max(idle) / 1000, budget.left() - reserve_s):
                break
            ready = [r for r in store.live_replicas() if r.status.value == "ready"]
            for r in rng.sample(ready, max(1, round(CHURN_SHARE * len(ready)))):
                runtime.crash(r.id)
            churn.append(await one_pass())
            say(f"churn round {len(churn)}: {churn[-1]:.0f} ms")
            n = 0
            while not converged():
                if n == 30 or not fits(max(idle) / 1000, budget.left() - reserve_s):
                    note(f"round {len(churn)} stopped after {n} recovery passes, before every replica was back "
                         + ("(30 passes)" if n == 30 else "(--timeout-s)"))
                    cut = True
                    break
                recovery.append(await one_pass())
                n += 1
                say(f"  recovery pass {n}: {recovery[-1]:.0f} ms")
            if not cut:
                rounds.append(n)
            emit({"churn_pass": churn, "recovery_pass": recovery,
                  "recovery_passes": round(sum(rounds) / len(rounds), 1) if rounds else None})
        if len(churn) < int(opts["churn_rounds"]):
            note(f"{len(churn)} of {opts['churn_rounds']} churn rounds fitted in --timeout-s")

        # creation, one at a time, in the built installation (the new endpoints are never placed)
        emit({"phase": "create"})
        created = await load([("POST", "/v1/endpoints", endpoint_body("STARTED"))] * int(opts["creates"]), 1,
                             max(reserve_s, budget.left()))
        emit({"create": created["latencies_ms"]})
    finally:
        rss, peak = rss_mb()
        emit({"rss_mb": None if rss is None else round(rss, 1),
              "peak_rss_mb": None if peak is None else round(peak, 1)})
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 10)


def drive(opts_json: str) -> None:
    """The driver's entry: JSON objects on stdout, one a line, merged by the orchestrator."""
    opts = json.loads(opts_json)

    def emit(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)

    try:
        asyncio.run(_drive(opts, emit))
    except Exception as exc:
        emit({"failed": f"{type(exc).__name__}: {exc}"})
        raise


# the orchestrator ----------------------------------------------------------------------------------


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def baseline_tree(commit: str) -> Path:
    """A git worktree of ``commit`` under .bench/ (made once, reused)."""
    full = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    tree = WORK / f"baseline-{full[:12]}"
    if (tree / "src" / "dedicate").is_dir():
        with contextlib.suppress(subprocess.CalledProcessError):
            if git("rev-parse", "HEAD", cwd=tree) == full:
                return tree
        shutil.rmtree(tree)
    git("worktree", "prune")
    tree.parent.mkdir(parents=True, exist_ok=True)
    git("worktree", "add", "--detach", "--force", str(tree), full)
    return tree


class Postgres:
    """A PostgreSQL server for the runs: the one --pg-url names, or a throwaway one as the tests start."""

    def __init__(self, url: str | None) -> None:
        self.url, self.root = url, None
        if url:
            return
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        initdb = next((str(b / "initdb") for b in bins if (b / "initdb").exists()), shutil.which("initdb"))
        if initdb is None:
            raise SystemExit("--backend postgres: no --pg-url and no PostgreSQL installed (make system-deps)")
        self.pg_ctl = str(Path(initdb).with_name("pg_ctl"))
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        root = Path(tempfile.mkdtemp(prefix="dedicate-bench-pg-"))
        self.root = root
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        subprocess.run(self._as_postgres([initdb, "-D", str(root / "data"), "-A", "trust", "-U", "postgres",
                                          "--no-sync"]), check=True, capture_output=True)
        subprocess.run(self._as_postgres([
            self.pg_ctl, "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            "start"]), check=True, capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}"

    @staticmethod
    def _as_postgres(argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def new_database(self, name: str) -> str:
        import psycopg

        assert self.url
        server = self.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(server + "/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"

    def drop_database(self, name: str) -> None:
        import psycopg

        assert self.url
        server = self.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(server + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self.root is not None:
            subprocess.run(self._as_postgres([self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate",
                                              "stop"]), capture_output=True)
            shutil.rmtree(self.root, ignore_errors=True)


def run_driver(tree: Path, label: str, size: int, args: argparse.Namespace,
               database_url: str, data_dir: Path) -> dict[str, Any]:
    """One tree at one size in a child process; what it measured, merged, with notes on what it did not."""
    opts = {"size": size, "seed": args.seed, "passes": args.passes, "churn_rounds": args.churn_rounds,
            "requests": args.requests, "concurrency": args.concurrency, "creates": args.creates,
            "database_url": database_url, "data_dir": str(data_dir),
            "budget_s": max(10.0, args.timeout_s - 30)}  # its own deadline, before the hard one
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    log = args.work / "logs" / f"{label}-{size}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--driver", json.dumps(opts)], cwd=tree,
                                env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=args.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            timed_out = True
    merged: dict[str, Any] = {"wall_s": round(time.monotonic() - t0, 1)}
    notes = []
    for line in out.decode(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                if "note" in record:
                    notes.append(record.pop("note"))
                merged.update(record)
    phase = merged.pop("phase", "start")
    if timed_out:
        notes.append(f"killed at --timeout-s {args.timeout_s:g}, in the {phase} phase")
    if "failed" in merged:
        notes.append(merged.pop("failed"))
    elif proc.returncode not in (0, None) and not timed_out:
        notes.append(f"driver exited with {proc.returncode}; see {log}")
    merged["notes"] = notes
    return merged


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run: p50/p99 of each sample (nearest rank), the values as they are, null if missing."""
    from _common import percentile

    out: dict[str, Any] = {}
    for key, _ in SAMPLED:
        values = sorted(raw.get(key) or [])
        out[f"{key}_p50_ms"] = round(percentile(values, 50), 2) if values else None
        out[f"{key}_p99_ms"] = round(percentile(values, 99), 2) if values else None
        out[f"{key}_n"] = len(values)
    for key, _ in VALUES:
        out[key] = raw.get(key)
    for key in ("endpoints", "stopped_endpoints", "replicas", "build_passes", "list_page_keys", "errors",
                "wall_s", "dedicate"):
        if key in raw:
            out[key] = raw[key]
    out["notes"] = raw.get("notes", [])
    return out


FIGURES = [f"{k}_p{q}_ms" for k, _ in SAMPLED for q in (50, 99)] + [k for k, _ in VALUES]


def growth(by_size: dict[str, dict[str, Any]]) -> tuple[str, dict[str, float | None]]:
    """The ratio of each figure between the two largest sizes measured, and their label ("100→1000")."""
    sizes = sorted(int(s) for s in by_size)
    if len(sizes) < 2:
        return "", {}
    a, b = by_size[str(sizes[-2])], by_size[str(sizes[-1])]
    ratios: dict[str, float | None] = {}
    for f in FIGURES:
        x, y = a.get(f), b.get(f)
        ok = isinstance(x, int | float) and isinstance(y, int | float) and x > 0
        ratios[f] = round(y / x, 2) if ok else None  # type: ignore[operator]
    return f"{sizes[-2]}→{sizes[-1]}", ratios


def verdicts(by_size: dict[str, dict[str, Any]], ratios: dict[str, float | None],
             linear: float | None) -> dict[str, bool | None]:
    """Each target at 1,000 endpoints (None where not measured), and whether nothing grew faster than linearly."""
    at = by_size.get(str(TARGET_SIZE), {})
    met: dict[str, bool | None] = {}
    for key, bound in TARGETS.items():
        value = at.get(key)
        met[key] = None if value is None else value <= bound
    timed = [f for f in FIGURES if f.endswith("_ms") or f in ("rss_mb",)]
    found = [ratios.get(f) for f in timed if ratios.get(f) is not None]
    met["growth_at_most_linear"] = None if linear is None or not found else \
        all(r <= linear for r in found)  # type: ignore[operator]
    return met


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def print_tree(name: str, info: dict[str, Any], step: str, ratios: dict[str, float | None]) -> None:
    sizes = sorted(info["sizes"], key=int)
    print(f"\n{name}: {info['tree']} ({info['commit']}), {info['backend']}")
    head = f"  {'figure':<34}" + "".join(f"{int(s):>12,}" for s in sizes) + (f"{'growth ' + step:>18}" if step else "")
    print(head)
    rows = [(f"{k}_p{q}_ms", f"{label} p{q} ms") for k, label in SAMPLED for q in (50, 99)] + list(VALUES)
    for key, label in rows:
        cells = "".join(f"{fmt(info['sizes'][s].get(key)):>12}" for s in sizes)
        g = ratios.get(key)
        print(f"  {label:<34}{cells}" + (f"{fmt(g) + ('' if g is None else '×'):>18}" if step else ""))
    for s in sizes:
        for note in info["sizes"][s].get("notes", []):
            print(f"  note at {int(s):,}: {note}")
        if info["sizes"][s].get("errors"):
            print(f"  errors at {int(s):,}: {info['sizes'][s]['errors']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))  # for _common
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000", help="endpoints (each with 10 replicas), comma-separated")
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--pg-url", default=os.environ.get("DEDICATE_BENCH_PG_URL"),
                   help="a PostgreSQL server (postgresql+psycopg://user@host:port) for --backend postgres; "
                        "without it a throwaway server is started")
    p.add_argument("--passes", type=int, default=20, help="idle passes timed")
    p.add_argument("--churn-rounds", type=int, default=5, help="rounds of 5 %% of the replicas dying")
    p.add_argument("--requests", type=int, default=320, help="requests for each of list and get")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--creates", type=int, default=100, help="endpoints created one at a time in the built world")
    p.add_argument("--timeout-s", type=float, default=900.0, help="per tree and size")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--baseline-commit", default=DEFAULT_BASELINE)
    p.add_argument("--baseline-tree", type=Path, help="a checkout of the baseline instead of a worktree")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--work", type=Path, default=WORK, help="where the data directories and driver logs go")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    trees: list[tuple[str, Path]] = [("current", ROOT)]
    if not args.no_baseline:
        trees.append(("baseline", args.baseline_tree.resolve() if args.baseline_tree
                      else baseline_tree(args.baseline_commit)))
    pg = Postgres(args.pg_url) if args.backend == "postgres" else None
    results: dict[str, dict[str, Any]] = {}
    for label, tree in trees:
        commit = ""
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            commit = git("rev-parse", "--short=12", "HEAD", cwd=tree)
            if label == "current" and git("status", "--porcelain", "--", "src", cwd=tree):
                commit += "+changes"
        results[label] = {"tree": str(tree), "commit": commit, "backend": args.backend, "sizes": {}}
    try:
        for size in sizes:  # the trees side by side at each size, so a run cut short still compares them
            for label, tree in trees:
                print(f"{label} at {size:,} endpoints ...", file=sys.stderr, flush=True)
                args.work.mkdir(parents=True, exist_ok=True)
                data_dir = Path(tempfile.mkdtemp(prefix=f"{label}-{size}-", dir=args.work))
                database = f"bench_{label}_{size}_{os.getpid()}"
                try:
                    url = pg.new_database(database) if pg else f"sqlite:///{data_dir / 'dedicate.db'}"
                    raw = run_driver(tree, label, size, args, url, data_dir)
                finally:
                    shutil.rmtree(data_dir, ignore_errors=True)
                    if pg is not None:
                        pg.drop_database(database)
                results[label]["sizes"][str(size)] = summarise(raw)
                print(f"  done in {raw.get('wall_s')} s" + "".join(f"; {n}" for n in raw["notes"]),
                      file=sys.stderr, flush=True)
    finally:
        if pg is not None:
            pg.close()

    ordered = sorted(set(sizes))
    linear = ordered[-1] / ordered[-2] if len(ordered) >= 2 else None
    out: dict[str, Any] = {}
    grown: dict[str, Any] = {}
    met: dict[str, Any] = {}
    for label, info in results.items():
        step, ratios = growth(info["sizes"])
        print_tree(label, info, step, ratios)
        grown[label] = ratios
        met[label] = verdicts(info["sizes"], ratios, linear)
        out[label] = info
    print(f"\ntargets at {TARGET_SIZE:,} endpoints / {TARGET_SIZE * REPLICAS_PER_ENDPOINT:,} replicas: "
          + ", ".join(f"{k} ≤ {v:g}" for k, v in TARGETS.items()) + "; each figure growing at most linearly")
    for label, verdict in met.items():
        print(f"  {label}: " + ", ".join(f"{k} {'-' if v is None else ('PASS' if v else 'FAIL')}"
                                           for k, v in verdict.items()))
    out["growth"] = {"step": growth(results["current"]["sizes"])[0], "linear": linear, **grown}
    out["targets"] = {**TARGETS, "size": TARGET_SIZE, "met": met}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--driver":
        drive(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--load":
        load_main(sys.argv[2])
    else:
        main()
