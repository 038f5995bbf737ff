"""Ray vs local: time from create to STARTED, and from a node's death to its replicas replaced and ready.

One invocation runs both runtimes on the same shape: ``--replicas`` 1-GPU replicas of one endpoint
(min = max) over ``--nodes`` logical nodes of ``--gpus`` H100s each, synthetic engines, a real
``dedicate up`` server. Local: the nodes are ``[[nodes]]`` entries and a node's death is SIGKILL to the
engines on it (the node itself cannot leave). Ray: the nodes are raylets of a ``ray.cluster_utils``
cluster on 127.0.0.1 and a node's death is its raylet killed; its replicas come back on the others.
Best fit packs the replicas onto the fewest nodes, so the node that dies holds a full node's worth.

    .venv/bin/python bench/ray_runtime.py [--replicas 16 --nodes 4 --gpus 8 --runs 1]

Ends with one line holding a JSON object of the figures. (Not ``bench/ray.py``: the benchmarks' folder
is on ``sys.path`` when they run, and a ``ray.py`` there would be what ``import ray`` finds.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RAY_TMP = ROOT / "build" / "ray-bench"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HW = "1x_nvidia_h100_80gb_sxm"

COMMON = """
[cpu]
slots = 0

[engines]
enabled = ["synthetic"]

[engines.synthetic]
startup_delay_s = 0.5
ttft_s = 0.01
tokens_per_s = 200

[timing]
reconcile_interval_s = 0.2
probe_interval_s = 0
probe_failure_threshold = 3
"""


def local_config(nodes: int, gpus: int) -> str:
    return COMMON + "".join(f'\n[[nodes]]\nname = "node-{i}"\ngpu_type = "h100-80gb"\ngpus = {gpus}\n'
                            f'engine = "synthetic"\n' for i in range(1, nodes + 1))


def ray_config(address: str, namespace: str) -> str:
    return COMMON + f"""
[runtime]
kind = "ray"
address = "{address}"
namespace = "{namespace}"
node_ip_address = "127.0.0.1"
refresh_s = 0.5
port_dir = "{RAY_TMP / 'ports'}"
node_labels = {{ "dedicate.io/pool" = "bench" }}
"""


class Server:
    def __init__(self, data: Path, config: str) -> None:
        data.mkdir(parents=True, exist_ok=True)
        (data / "config.toml").write_text(config)
        env = {**os.environ, "DEDICATE_DATA_DIR": str(data), "DEDICATE_CONFIG": str(data / "config.toml"),
               "DEDICATE_PORT": "0"}
        self.log = open(data / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "dedicate.cli.main", "up"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + 90
        while not (data / "port").exists() or not (data / "admin.key").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {(data / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{int((data / 'port').read_text())}"
        self.client = httpx.Client(base_url=self.url, timeout=30,
                                   headers={"authorization": f"Bearer {(data / 'admin.key').read_text().strip()}"})
        while True:
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        for e in self.client.get("/v1/endpoints", params={"mine": "false"}).json()["data"]:
            self.client.delete(f"/v1/endpoints/{e['id']}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                n["replicas"] for n in self.client.get("/v1/nodes").json()["data"]):
            time.sleep(0.2)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.client.close()
        self.log.close()


def all_ready(s: Server, endpoint_id: str, n: int, old: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
    e = s.client.get(f"/v1/endpoints/{endpoint_id}").json()
    r = e["replicas"]
    if not (e["state"] == "STARTED" and r["ready"] == n and r["starting"] == 0 and r["stopping"] == 0):
        return False
    return not old & set(holders(s))


def holders(s: Server) -> dict[str, str]:
    return {h["replica"]: n["name"] for n in s.client.get("/v1/nodes").json()["data"] for h in n["replicas"]}


def wait(check: Any, timeout: float = 300.0) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise SystemExit("timed out")
        time.sleep(0.05)
    return time.monotonic() - t0


def engine_pids(replica_ids: set[str]) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--replica-id" in argv:
            i = argv.index(b"--replica-id")
            if i + 1 < len(argv) and argv[i + 1].decode() in replica_ids:
                out.append(int(entry.name))
    return out


def run_once(s: Server, replicas: int, kill_node: Any) -> dict[str, float]:
    made = s.client.post("/v1/endpoints", json={"model": MODEL, "hardware": HW,
                                                 "autoscaling": {"min_replicas": replicas, "max_replicas": replicas}})
    made.raise_for_status()
    ep = made.json()["id"]
    started = wait(lambda: all_ready(s, ep, replicas))
    placed = holders(s)
    busiest = max(set(placed.values()), key=lambda n: sum(1 for v in placed.values() if v == n))
    doomed = {r for r, n in placed.items() if n == busiest}
    t0 = time.monotonic()
    kill_node(busiest, doomed)
    wait(lambda: all_ready(s, ep, replicas, old=doomed))
    replaced = time.monotonic() - t0
    s.client.delete(f"/v1/endpoints/{ep}")
    wait(lambda: not holders(s), timeout=120)
    return {"create_to_started_s": started, "node_death_to_replaced_s": replaced, "replicas_on_dead_node": len(doomed)}


def bench_local(work: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    s = Server(work / "local", local_config(args.nodes, args.gpus))

    def kill(node: str, replica_ids: set[str]) -> None:
        for pid in engine_pids(replica_ids):
            os.kill(pid, signal.SIGKILL)

    try:
        return [run_once(s, args.replicas, kill) for _ in range(args.runs)]
    finally:
        s.stop()


def bench_ray(work: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_TMPDIR": str(RAY_TMP)})
    (RAY_TMP / "ray").mkdir(parents=True, exist_ok=True)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}})
    nodes: dict[str, Any] = {}
    serial = [0]

    def add(i: int) -> None:
        serial[0] += 1
        name = f"node-{serial[0]}"
        nodes[name] = cluster.add_node(
            num_cpus=0, num_gpus=args.gpus, resources={"accelerator_type:H100": args.gpus}, node_ip_address="127.0.0.1",
            labels={"dedicate.io/node-name": name, "dedicate.io/pool": "bench", "dedicate.io/engine": "synthetic"})

    for i in range(args.nodes):
        add(i)
    cluster.wait_for_nodes()
    s = Server(work / "ray", ray_config(cluster.address, f"bench-{os.getpid()}"))

    def kill(node: str, replica_ids: set[str]) -> None:
        cluster.remove_node(nodes.pop(node), allow_graceful=False)
        add(0)  # the next run has its 4 nodes again (the new one joins while this run recovers)

    try:
        return [run_once(s, args.replicas, kill) for _ in range(args.runs)]
    finally:
        s.stop()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=16)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus", type=int, default=8, help="logical H100s per node")
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dedicate-bench-ray-"))
    figures: dict[str, Any] = {"replicas": args.replicas, "nodes": args.nodes, "gpus_per_node": args.gpus}
    try:
        for name, fn in (("local", bench_local), ("ray", bench_ray)):
            runs = fn(work, args)
            for key in ("create_to_started_s", "node_death_to_replaced_s"):
                figures[f"{name}_{key}"] = round(statistics.median(r[key] for r in runs), 2)
            figures[f"{name}_replicas_on_dead_node"] = runs[0]["replicas_on_dead_node"]
            print(f"{name}: create→STARTED {figures[f'{name}_create_to_started_s']} s, node death→replaced "
                  f"{figures[f'{name}_node_death_to_replaced_s']} s ({runs[0]['replicas_on_dead_node']} replicas)",
                  flush=True)
        for key in ("create_to_started_s", "node_death_to_replaced_s"):
            figures[f"ray_over_local_{key}"] = round(figures[f"ray_{key}"] / max(figures[f"local_{key}"], 1e-9), 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
