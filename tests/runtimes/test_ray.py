"""The Ray runtime on a real multi-node Ray cluster (tests/raycluster.py), every node on 127.0.0.1.

The engines here are real synthetic engines (processes that serve HTTP on the node's address), started
by real replica actors in real placement groups; the GPUs are logical, declared per node.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dedicate.engines.registry import EngineLaunch, engine
from dedicate.runtimes.base import Demand, LaunchSpec
from dedicate.runtimes.ray import RayOptions, RayRuntime, gpu_type_of, nodes_of
from tests.raycluster import RAY_TMP, RayCluster, unique, wait

pytestmark = pytest.mark.ray

GPU_TYPES = ["h100-80gb", "a100-40gb", "a100-80gb", "l40s-48gb"]


@pytest.fixture(scope="module")
def pool(ray_cluster: RayCluster) -> Iterator[str]:
    """Nodes of this module's own: rt-8 (8 x H100), rt-4 (4 x H100), rt-a100 (2 x A100)."""
    name = unique("rt")
    ray_cluster.add_gpu_node(f"{name}-8", 8, name)
    ray_cluster.add_gpu_node(f"{name}-4", 4, name)
    ray_cluster.add_gpu_node(f"{name}-a100", 2, name, accelerator="A100-80G")
    yield name
    for n in [n for n in ray_cluster.nodes if n.startswith(name)]:
        ray_cluster.remove(n)


def make_runtime(ray_cluster: RayCluster, pool: str, namespace: str, **extra: object) -> RayRuntime:
    options = RayOptions(address=ray_cluster.address, namespace=namespace, node_ip_address="127.0.0.1",
                         refresh_s=0.2, port_dir=str(RAY_TMP / "ports"), node_labels={"dedicate.io/pool": pool},
                         **extra)  # type: ignore[arg-type]
    return RayRuntime(options, GPU_TYPES)


@pytest.fixture
def runtime(ray_cluster: RayCluster, pool: str) -> Iterator[RayRuntime]:
    rt = make_runtime(ray_cluster, pool, unique("ns"), placement_timeout_s=3.0)
    yield rt
    for handle in rt.running().values():
        rt.stop(handle, 2.0)
    rt.close()


def synthetic(rt: RayRuntime, replica_id: str, node: str, gpus: int, tmp_path: Path, **options: object
              ) -> LaunchSpec:
    binding = rt.binding(replica_id, node)
    argv = engine("synthetic").command(EngineLaunch(
        model_dir=None, served_model_name="m", replica_id=replica_id, instance=rt.instance,
        port_file=binding.port_file, host=binding.host, options={"startup_delay_s": 0.0, **options},
        gpu_count=gpus))
    env = {"CUDA_VISIBLE_DEVICES": "not-ray's", "DEDICATE_REPLICA_TOKEN": "t"}
    return LaunchSpec(replica_id, argv, env, tmp_path / replica_id / "engine.log",
                      node, tuple(range(gpus)))


def actor_info(rt: RayRuntime, replica_id: str) -> dict[str, object]:
    import ray

    info: dict[str, object] = ray.get(ray.get_actor(replica_id, namespace=rt.instance).info.remote(), timeout=30)
    return info


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -------------------------------------------------------------------------------- inventory


def test_the_inventory_is_the_pools_alive_gpu_nodes_with_their_type_from_rays_accelerator_resource(
        runtime: RayRuntime, pool: str) -> None:
    got = {n.name: (n.gpu_type, n.slots, n.engine) for n in runtime.nodes()}
    assert got == {f"{pool}-4": ("h100-80gb", 4, "synthetic"), f"{pool}-8": ("h100-80gb", 8, "synthetic"),
                   f"{pool}-a100": ("a100-80gb", 2, "synthetic")}
    assert runtime.nodes() is runtime.nodes(), "the same tuple while the nodes do not change"


def test_a_node_that_joins_or_leaves_shows_in_the_inventory(runtime: RayRuntime, ray_cluster: RayCluster,
                                                            pool: str) -> None:
    name = f"{pool}-extra"
    ray_cluster.add_gpu_node(name, 2, pool, accelerator="L40S")
    wait("the new node", lambda: any(n.name == name and n.gpu_type == "l40s-48gb" for n in runtime.nodes()))
    ray_cluster.remove(name)
    wait("the node gone", lambda: all(n.name != name for n in runtime.nodes()), timeout=30)


def test_gpu_types_map_from_accelerator_resources_or_a_label() -> None:
    assert gpu_type_of({"accelerator_type:H100": 1}, {}, GPU_TYPES) == "h100-80gb"
    assert gpu_type_of({"accelerator_type:A100-40G": 1}, {}, GPU_TYPES) == "a100-40gb"
    assert gpu_type_of({"accelerator_type:A100": 1}, {}, GPU_TYPES) == "a100-80gb"  # the largest, unnamed
    assert gpu_type_of({"accelerator_type:TPU-V4": 1}, {}, GPU_TYPES) is None
    assert gpu_type_of({}, {"dedicate.io/gpu-type": "h100-80gb"}, GPU_TYPES) == "h100-80gb"
    table = [{"NodeID": "a" * 56, "Alive": True, "Resources": {"GPU": 8.0, "accelerator_type:H100": 1.0},
              "Labels": {"dedicate.io/region": "us-east-1"}, "NodeManagerAddress": "10.0.0.5"},
             {"NodeID": "b" * 56, "Alive": False, "Resources": {"GPU": 8.0, "accelerator_type:H100": 1.0}},
             {"NodeID": "c" * 56, "Alive": True, "Resources": {"CPU": 64.0}}]
    (node,) = nodes_of(table, GPU_TYPES)
    assert (node.name, node.slots, node.region, node.ip) == (f"ray-{'a' * 12}", 8, "us-east-1", "10.0.0.5")


# -------------------------------------------------------------------------------- replicas


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_a_replica_lands_on_the_chosen_node_with_exactly_its_gpus_and_answers_there(
        runtime: RayRuntime, pool: str, gpus: int, tmp_path: Path) -> None:
    node = f"{pool}-4"
    rid = f"r-{gpus}gpu{os.getpid() % 1000}"
    handle = runtime.launch(synthetic(runtime, rid, node, gpus, tmp_path))
    address = wait("its address", lambda: runtime.address_of(rid), timeout=60)
    assert httpx.get(f"{address.url}/health", timeout=5).status_code == 200
    info = actor_info(runtime, rid)
    chosen = next(n for n in runtime.ray_nodes() if n.name == node)
    assert info["node_id"] == chosen.node_id, "pinned to the node dedicate chose"
    assert len(info["gpu_ids"]) == gpus, "one bundle of all its GPUs: never split across nodes"  # type: ignore[arg-type]
    env = Path(f"/proc/{info['pid']}/environ").read_bytes().split(b"\0")
    assert f"CUDA_VISIBLE_DEVICES={','.join(info['gpu_ids'])}".encode() in env, "Ray's GPUs, not the spec's"  # type: ignore[arg-type]
    assert runtime.running()[rid] == handle
    assert runtime.poll(handle).running
    code = runtime.stop(handle, 5.0)
    assert code is not None
    assert not alive(int(info["pid"])), "the engine ended with its replica"  # type: ignore[call-overload]
    assert rid not in runtime.running() and not runtime.poll(handle).running


def test_replicas_fill_a_node_and_the_next_waits_then_is_given_up_and_reads_unplaced(
        runtime: RayRuntime, pool: str, tmp_path: Path) -> None:
    node = f"{pool}-a100"
    first = runtime.launch(synthetic(runtime, "r-fill", node, 2, tmp_path))
    wait("the first placed", lambda: runtime.address_of("r-fill"), timeout=60)
    # Something dedicate does not account for holds the node's GPUs: Ray cannot place the next one.
    late = runtime.launch(synthetic(runtime, "r-late", node, 2, tmp_path))
    assert "r-late" in runtime.running(), "waiting for its placement, it is not gone"
    wait("the placement given up", lambda: "r-late" not in runtime.running(), timeout=30)
    state = runtime.poll(late)
    assert not state.running and state.unplaced
    assert state.detail is not None and "could not place 2 GPU(s)" in state.detail and node in state.detail
    assert runtime.poll(first).running


def test_an_engine_that_exits_ends_its_replica_with_its_code_and_log_tail(
        runtime: RayRuntime, pool: str, tmp_path: Path) -> None:
    spec = synthetic(runtime, "r-crash", f"{pool}-8", 1, tmp_path)
    crash = LaunchSpec(spec.replica_id, [sys.executable, "-c", "import sys; print('boom: out of memory'); "
                                         "sys.stdout.flush(); sys.exit(3)"], {}, spec.log_path, spec.node, (0,))
    handle = runtime.launch(crash)
    state = wait("the exit", lambda: None if (s := runtime.poll(handle)).running else s, timeout=60)
    assert state.exit_code == 3 and state.detail is not None and "boom: out of memory" in state.detail
    assert "r-crash" not in runtime.running()
    runtime.stop(handle, 1.0)  # clears what is left: the group and the record


def test_a_restarted_control_plane_finds_every_replica_by_name_with_the_same_handle(
        runtime: RayRuntime, ray_cluster: RayCluster, pool: str, tmp_path: Path) -> None:
    handle = runtime.launch(synthetic(runtime, "r-keep", f"{pool}-8", 2, tmp_path))
    address = wait("it listens", lambda: runtime.address_of("r-keep"), timeout=60)
    again = make_runtime(ray_cluster, pool, runtime.instance)
    try:
        assert again.running() == {"r-keep": handle}
        assert wait("the address, asked again", lambda: again.address_of("r-keep"), timeout=30) == address
        other = make_runtime(ray_cluster, pool, unique("other"))
        assert other.running() == {}, "another installation's namespace sees none of them"
        other.close()
    finally:
        again.stop(handle, 5.0)
        again.close()


def test_a_dead_node_takes_its_replicas_and_their_engines(
        ray_cluster: RayCluster, runtime: RayRuntime, pool: str, tmp_path: Path) -> None:
    node = f"{pool}-doomed"
    ray_cluster.add_gpu_node(node, 2, pool)
    wait("the node", lambda: any(n.name == node for n in runtime.nodes()))
    handle = runtime.launch(synthetic(runtime, "r-doomed", node, 2, tmp_path))
    wait("it listens", lambda: runtime.address_of("r-doomed"), timeout=60)
    pid = int(actor_info(runtime, "r-doomed")["pid"])  # type: ignore[call-overload]
    ray_cluster.remove(node)
    state = wait("the replica gone", lambda: None if (s := runtime.poll(handle)).running else s, timeout=60)
    assert state.detail is not None and "actor is gone" in state.detail
    wait("its engine gone with it", lambda: not alive(pid), timeout=30)
    wait("the node out of the inventory", lambda: all(n.name != node for n in runtime.nodes()), timeout=30)
    runtime.stop(handle, 1.0)


def test_asking_where_a_replica_listens_never_waits_for_its_placement(
        runtime: RayRuntime, pool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    node = f"{pool}-a100"
    runtime.launch(synthetic(runtime, "r-holds", node, 2, tmp_path))
    wait("the first placed", lambda: runtime.address_of("r-holds"), timeout=60)
    runtime.launch(synthetic(runtime, "r-waits", node, 2, tmp_path))

    def waits(*args: object, **kwargs: object) -> object:
        raise AssertionError("address_of waited on an answer that has not come")

    with monkeypatch.context() as m:
        m.setattr(ray, "get", waits)  # its actor has no worker to answer with: a get would block
        for _ in range(5):
            assert runtime.address_of("r-waits") is None
    assert "r-waits" in runtime.running()


def test_asking_for_hardware_is_a_standing_request_to_rays_autoscaler(runtime: RayRuntime) -> None:
    from ray.experimental.internal_kv import _internal_kv_get

    assert runtime.ask_for([Demand("h100-80gb", 8, 2)])
    raw = _internal_kv_get(b"autoscaler_resource_request")
    assert raw is not None and b'"GPU": 8.0' in raw and b"accelerator_type:H100" in raw
    assert runtime.ask_for([]) is False
    assert _internal_kv_get(b"autoscaler_resource_request") in (b"[]", None)
