"""One real Ray cluster for the whole test session, every node on 127.0.0.1.

``ray.cluster_utils.Cluster`` starts a head and worker nodes as real raylet
processes on this machine; each worker declares logical GPUs, Ray's
``accelerator_type:<X>`` resource and dedicate's labels (its name, the pool a
test owns, the synthetic engine), so replicas of 1, 2 and 4 "GPUs" are placed
and run for real without a GPU. Tests that need nodes of their own add them
with a pool label of their own and remove them when done (``add_gpu_node``),
so tests sharing the cluster never see each other's nodes.

The head's health checks are tightened so a killed node is declared dead in
about two seconds rather than Ray's default of half a minute.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RAY_TMP = ROOT / "build" / "ray"

# Every Ray process and driver stays on loopback (see DEVELOPERS.md: without the first, a driver
# connecting to a loopback cluster resolves the machine's own non-loopback address).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TMPDIR": str(RAY_TMP)}
HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 500,
          "health_check_failure_threshold": 3}


@dataclass
class RayCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    address: str
    nodes: dict[str, Any] = field(default_factory=dict)  # name → the cluster's node handle

    def add_gpu_node(self, name: str, gpus: int, pool: str, accelerator: str = "H100",
                     engine: str = "synthetic", wait: bool = True, shown_as: str | None = None) -> Any:
        """A node of ``gpus`` logical GPUs, known here as ``name``; dedicate calls it ``shown_as`` (or ``name``)."""
        node = self.cluster.add_node(
            num_cpus=0, num_gpus=gpus, resources={f"accelerator_type:{accelerator}": gpus},
            labels={"dedicate.io/node-name": shown_as or name, "dedicate.io/pool": pool,
                    "dedicate.io/engine": engine},
            node_ip_address="127.0.0.1", wait=wait)
        self.nodes[name] = node
        return node

    def remove(self, name: str, graceful: bool = False) -> None:
        node = self.nodes.pop(name)
        self.cluster.remove_node(node, allow_graceful=graceful)

    def wait_for_nodes(self, timeout: float = 60.0) -> None:
        self.cluster.wait_for_nodes(timeout)

    def runtime_config(self, pool: str, namespace: str, placement_timeout_s: float = 20.0) -> str:
        """The ``[runtime]`` table of a server on this cluster that owns the nodes of ``pool``."""
        return f"""
[runtime]
kind = "ray"
address = "{self.address}"
namespace = "{namespace}"
node_ip_address = "127.0.0.1"
placement_timeout_s = {placement_timeout_s}
refresh_s = 0.5
port_dir = "{RAY_TMP / 'ports'}"
node_labels = {{ "dedicate.io/pool" = "{pool}" }}
"""


def start() -> RayCluster:
    for k, v in RAY_ENV.items():
        os.environ[k] = v
    (RAY_TMP / "ray").mkdir(parents=True, exist_ok=True)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False, "_system_config": HEALTH})
    return RayCluster(cluster, cluster.address)


def stop(rc: RayCluster) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    rc.cluster.shutdown()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait(what: str, check: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
