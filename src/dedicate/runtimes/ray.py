"""The Ray runtime: replicas are detached Ray actors on the nodes of a Ray cluster.

dedicate connects to an existing cluster as a **driver** (``ray.init(address=
"<head>:6379")``): the control plane's machine must be able to reach every
node, as any Ray node can (run it on the head, on a node, or in a pod of the
KubeRay cluster). Ray places and runs actors; dedicate decides how many
replicas of which shape and on which node, as it does locally.

- **Inventory**: the alive nodes with GPUs, read from Ray's node table by a
  background thread every ``refresh_s`` (so ``nodes()`` never waits on the
  cluster). A node's GPU type comes from its ``dedicate.io/gpu-type`` label,
  else from Ray's ``accelerator_type:<X>`` resource mapped onto the catalog;
  its name from ``dedicate.io/node-name``, else ``ray-<node id>``; its region
  from ``dedicate.io/region``; the engine its replicas run from
  ``dedicate.io/engine`` (e.g. ``synthetic`` on a cluster of logical GPUs).
- **A replica** is a placement group of one bundle of its N GPUs, pinned to
  the chosen node by Ray's ``ray.io/node-id`` label, with the replica's actor
  (``ray_replica.ReplicaActor``, named by the replica id, detached, never
  restarted by Ray) in it. One bundle of N and not N bundles of one: the
  engine is one process tree on one node, and Ray hands an actor the GPUs of
  one bundle only, so one bundle is what gives the engine all N in its
  ``CUDA_VISIBLE_DEVICES``. The handle is ``pid 0`` plus ``ray:<group id>/<replica id>``.
- **A placement Ray cannot satisfy** (its GPUs taken by something dedicate
  does not know of, the node gone) is given up after ``placement_timeout_s``:
  the group is removed and the replica reads as exited, unplaced, so the
  control plane queues it again with the reason instead of waiting forever.
- **Exits**: an engine that ends on its own takes its actor with it, after
  leaving its exit code and log tail in Ray's key-value store; an actor that
  is gone without one died with its node. Either way the replica reads as
  exited, with the reason, from any machine.
- **Adoption**: ``running()`` lists the named actors of this installation's
  namespace, so a restarted control plane (or the next lease holder) finds
  every replica by name.
- **Asking for hardware**: ``ask_for`` forwards the queued shapes to
  ``ray.autoscaler.sdk.request_resources``; on a cluster without an
  autoscaler that request does nothing.

Every call that reaches the cluster runs in the caller's thread (the control
plane calls runtimes off its event loop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dedicate.domain.records import Address
from dedicate.runtimes.base import Binding, Demand, Handle, LaunchSpec, Node, ProcessState
from dedicate.runtimes.ray_replica import KV_NAMESPACE, ReplicaActor, exit_key

log = logging.getLogger("dedicate.runtime.ray")

NODE_ID_LABEL = "ray.io/node-id"
GPU_TYPE_LABEL = "dedicate.io/gpu-type"
NODE_NAME_LABEL = "dedicate.io/node-name"
REGION_LABEL = "dedicate.io/region"
ENGINE_LABEL = "dedicate.io/engine"
ACCELERATOR_PREFIX = "accelerator_type:"
CALL_TIMEOUT_S = 10.0
LEFTOVER_S = 15.0  # a placement group of ours without its actor this long is a crash's leftover


@dataclass(frozen=True)
class RayNode(Node):
    """A node of the cluster: a dedicate node plus the Ray facts behind it."""

    node_id: str = ""
    ip: str = ""


@dataclass(frozen=True)
class RayOptions:
    """``[runtime]`` with ``kind = "ray"``."""

    address: str
    namespace: str = "dedicate"
    node_ip_address: str | None = None
    placement_timeout_s: float = 60.0
    refresh_s: float = 2.0
    request_resources: bool = True
    port_dir: str = "/tmp/dedicate-ray"  # on each node: where an engine writes its port
    node_labels: Mapping[str, str] = field(default_factory=dict)  # only nodes with these labels are dedicate's


def gpu_type_of(resources: Mapping[str, float], labels: Mapping[str, str], gpu_types: Iterable[str]) -> str | None:
    """The catalog GPU type of a node: its label, else its accelerator resource mapped onto ``gpu_types``.

    ``accelerator_type:H100`` → ``h100-80gb`` where the catalog has one H100 size;
    ``accelerator_type:A100-40G`` picks the 40 GB A100. None where nothing matches.
    """
    if labels.get(GPU_TYPE_LABEL):
        return labels[GPU_TYPE_LABEL]
    known = sorted(set(gpu_types))
    for key in resources:
        if not key.startswith(ACCELERATOR_PREFIX):
            continue
        accel = key[len(ACCELERATOR_PREFIX):].lower()
        family, _, size = accel.partition("-")
        matches = [t for t in known if t.partition("-")[0] == family]
        digits = "".join(c for c in size if c.isdigit())
        if digits:
            matches = [t for t in matches if t.partition("-")[2] == f"{digits}gb"]
        if len(matches) >= 1:
            return matches[-1]  # the largest of the family where the size is not named
    return None


def nodes_of(table: Sequence[Mapping[str, Any]], gpu_types: Iterable[str],
             selector: Mapping[str, str] | None = None) -> tuple[RayNode, ...]:
    """Ray's node table → the alive GPU nodes dedicate can place on (those with ``selector``'s labels)."""
    out: list[RayNode] = []
    types = list(gpu_types)
    for n in table:
        if not n.get("Alive"):
            continue
        resources: Mapping[str, float] = n.get("Resources", {})
        labels: Mapping[str, str] = n.get("Labels", {}) or {}
        if any(labels.get(k) != v for k, v in (selector or {}).items()):
            continue
        gpus = int(resources.get("GPU", 0))
        if gpus <= 0:
            continue
        gpu_type = gpu_type_of(resources, labels, types)
        if gpu_type is None:
            log.warning("Ray node %s has %d GPU(s) of no catalog type; label it %s", n["NodeID"], gpus,
                        GPU_TYPE_LABEL)
            continue
        node_id = str(n["NodeID"])
        out.append(RayNode(name=labels.get(NODE_NAME_LABEL) or f"ray-{node_id[:12]}", gpu_type=gpu_type,
                           slots=gpus, engine=labels.get(ENGINE_LABEL) or None,
                           region=labels.get(REGION_LABEL) or None, node_id=node_id,
                           ip=str(n.get("NodeManagerAddress", ""))))
    return tuple(sorted(out, key=lambda x: x.name))


class RayRuntime:
    def __init__(self, options: RayOptions, gpu_types: Iterable[str]) -> None:
        import ray

        self.options = options
        self.instance = options.namespace
        self._gpu_types = list(gpu_types)
        self._ray = ray
        self._owns_driver = not ray.is_initialized()
        if self._owns_driver:  # a process is one driver of one cluster; its namespace is not relied on
            init: dict[str, Any] = {"address": options.address, "namespace": options.namespace,
                                    "log_to_driver": False}
            if options.node_ip_address:
                init["_node_ip_address"] = options.node_ip_address
            ray.init(**init)
        self._actor_class = ray.remote(ReplicaActor)
        self._lock = threading.Lock()
        self._nodes: tuple[RayNode, ...] = ()
        self._pending_since: dict[str, float] = {}  # replica id → when its placement was first seen pending
        self._unplaced: dict[str, str] = {}  # replica id → why Ray could not place it
        self._placed_on: dict[str, str] = {}  # replica id → the node it was launched for, by this process
        self._info_asked: dict[str, Any] = {}  # replica id → the actor's pending answer of where it listens
        self._no_actor_since: dict[str, float] = {}  # replica id → when its group was first seen without actor
        self._asked: list[dict[str, float]] | None = None
        self._closed = threading.Event()
        self.refresh()
        self._refresher = threading.Thread(target=self._refresh_loop, name="ray-inventory", daemon=True)
        self._refresher.start()

    # inventory --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the node table now; the tuple changes only when the nodes do."""
        nodes = nodes_of(self._ray.nodes(), self._gpu_types, self.options.node_labels)  # type: ignore[no-untyped-call]
        with self._lock:
            if nodes != self._nodes:
                if self._nodes:
                    log.info("Ray nodes now: %s", ", ".join(f"{n.name} ({n.slots}x {n.gpu_type})" for n in nodes))
                self._nodes = nodes

    def _refresh_loop(self) -> None:
        while not self._closed.wait(self.options.refresh_s):
            try:
                self.refresh()
            except Exception as exc:  # the cluster away for a moment: keep the last view
                log.warning("reading Ray's node table failed: %r", exc)

    def nodes(self) -> tuple[Node, ...]:
        return self.ray_nodes()

    def ray_nodes(self) -> tuple[RayNode, ...]:
        with self._lock:
            return self._nodes

    def _node(self, name: str) -> RayNode | None:
        return next((n for n in self.ray_nodes() if n.name == name), None)

    def close(self) -> None:
        """Stop reading the cluster and disconnect (the actors live on: they are detached)."""
        self._closed.set()
        if self._owns_driver:
            with contextlib.suppress(Exception):
                self._ray.shutdown()

    # replicas ---------------------------------------------------------------------------------

    def _group_name(self, replica_id: str) -> str:
        return f"{self.instance}/{replica_id}"

    def binding(self, replica_id: str, node: str) -> Binding:
        n = self._node(node)
        host = n.ip if n is not None and n.ip else "0.0.0.0"
        return Binding(host, Path(self.options.port_dir) / self.instance / replica_id / "port")

    def launch(self, spec: LaunchSpec) -> Handle:
        from ray.util import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        node = self._node(spec.node)
        if node is None:
            raise RuntimeError(f"Ray node {spec.node} is not in the cluster now")
        gpus = max(1, len(spec.slots))
        self._unplaced.pop(spec.replica_id, None)
        # The replica is launched only now: a group or actor of its name is what a control plane that
        # died mid-launch left behind, never a replica that runs. It goes first.
        self._remove(spec.replica_id)
        group = placement_group([{"GPU": float(gpus)}], strategy="STRICT_PACK",
                                name=self._group_name(spec.replica_id), lifetime="detached",
                                bundle_label_selector=[{NODE_ID_LABEL: node.node_id}])
        env = {k: v for k, v in spec.env.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
        binding = self.binding(spec.replica_id, spec.node)
        self._actor_class.options(  # type: ignore[attr-defined]
            name=spec.replica_id, namespace=self.instance, lifetime="detached", max_restarts=0,
            num_cpus=0, num_gpus=float(gpus),
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0),
        ).remote(spec.replica_id, self.instance, list(spec.argv), env, str(spec.log_path), str(binding.port_file))
        self._pending_since[spec.replica_id] = time.monotonic()
        self._placed_on[spec.replica_id] = spec.node
        return self._handle(group.id.hex(), spec.replica_id)

    def _groups(self) -> dict[str, dict[str, Any]]:
        """Replica id → Ray's record of its placement group, for this installation's live groups."""
        prefix = f"{self.instance}/"
        out: dict[str, dict[str, Any]] = {}
        for group_id, g in self._ray.util.placement_group_table().items():
            name = g.get("name") or ""
            if name.startswith(prefix) and g.get("state") != "REMOVED":
                out[name[len(prefix):]] = {**g, "id": group_id}
        return out

    def running(self) -> dict[str, Handle]:
        """Every replica whose actor is alive (or waiting for its placement), by name.

        A placement pending beyond ``placement_timeout_s`` is given up here: its group is
        removed and the replica is left out, to read as exited, unplaced.
        """
        groups = self._groups()
        actors = {a["name"] for a in self._ray.util.list_named_actors(all_namespaces=True)
                  if a.get("namespace") == self.instance}
        now = time.monotonic()
        found: dict[str, Handle] = {}
        for replica_id, g in groups.items():
            if replica_id not in actors:
                self._actorless(replica_id, now)
                continue
            self._no_actor_since.pop(replica_id, None)
            if g.get("state") == "CREATED":
                self._pending_since.pop(replica_id, None)
            else:
                since = self._pending_since.setdefault(replica_id, now)
                if now - since > self.options.placement_timeout_s:
                    self._give_up(replica_id, g)
                    continue
            found[replica_id] = self._handle(g["id"], replica_id)
        for gone in set(self._pending_since) - set(groups):
            self._pending_since.pop(gone, None)
        for gone in set(self._no_actor_since) - set(groups):
            self._no_actor_since.pop(gone, None)
        return found

    def _actorless(self, replica_id: str, now: float) -> None:
        """A group of ours with no actor: its actor is being created, or a control plane died between the
        two. Past ``LEFTOVER_S`` it is a leftover holding GPUs for nothing, and is removed."""
        since = self._no_actor_since.setdefault(replica_id, now)
        if now - since > LEFTOVER_S and replica_id not in self._unplaced:
            log.warning("removing the placement group of replica %s: it has had no actor for %.0f s",
                        replica_id, now - since)
            self._remove(replica_id)
            self._no_actor_since.pop(replica_id, None)

    def _give_up(self, replica_id: str, group: Mapping[str, Any]) -> None:
        shape: Mapping[str, float] = next(iter(group.get("bundles", {}).values()), {})
        where = self._placed_on.get(replica_id)
        self._unplaced[replica_id] = (
            f"Ray could not place {int(shape.get('GPU', 0))} GPU(s) within {self.options.placement_timeout_s:.0f} s"
            + (f" on {where}" if where else "") + "; queued again")
        log.warning("replica %s: %s", replica_id, self._unplaced[replica_id])
        self._remove(replica_id)

    def _actor(self, replica_id: str) -> Any | None:
        try:
            return self._ray.get_actor(replica_id, namespace=self.instance)
        except ValueError:
            return None

    def _exit_record(self, replica_id: str) -> dict[str, Any] | None:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(exit_key(self.instance, replica_id), namespace=KV_NAMESPACE)
        if raw is None:
            return None
        with contextlib.suppress(ValueError):
            record: dict[str, Any] = json.loads(raw)
            return record
        return None

    def poll(self, handle: Handle) -> ProcessState:
        replica_id = self._replica_of(handle)
        if replica_id is None:
            return ProcessState(False, None, detail="not a Ray replica handle")
        if replica_id in self._unplaced:
            return ProcessState(False, None, detail=self._unplaced[replica_id], unplaced=True)
        record = self._exit_record(replica_id)
        if record is not None:
            return ProcessState(False, record.get("code"), detail=record.get("detail") or None)
        if self._actor(replica_id) is not None and replica_id in self._groups():
            return ProcessState(True)
        return ProcessState(False, None, detail="its Ray actor is gone: the node it ran on left the cluster, "
                                                "or Ray killed its worker")

    @staticmethod
    def _handle(group_id: str, replica_id: str) -> Handle:
        return Handle(0, f"ray:{group_id}/{replica_id}")

    @staticmethod
    def _replica_of(handle: Handle) -> str | None:
        kind, _, rest = handle.started.partition(":")
        return rest.partition("/")[2] or None if kind == "ray" else None

    def stop(self, handle: Handle, grace_s: float) -> int | None:
        """Stop the engine through its actor, then remove the actor and its placement group."""
        replica_id = self._replica_of(handle)
        if replica_id is None:
            return None
        code: int | None = None
        actor = self._actor(replica_id)
        placed = self._groups().get(replica_id, {}).get("state") == "CREATED"
        if actor is not None and placed:  # an actor still waiting for its placement has no engine to stop
            try:
                code = self._ray.get(actor.stop.remote(grace_s), timeout=grace_s + CALL_TIMEOUT_S)
            except Exception as exc:  # dead, or not placed yet: removing it below ends it either way
                log.info("replica %s: stop through its actor: %r", replica_id, exc)
        record = self._exit_record(replica_id)
        if code is None and record is not None:
            code = record.get("code")
        self._remove(replica_id)
        return code

    def _remove(self, replica_id: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_del
        from ray.util import get_placement_group, remove_placement_group

        actor = self._actor(replica_id)
        if actor is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
        with contextlib.suppress(Exception):
            remove_placement_group(get_placement_group(self._group_name(replica_id)))
        with contextlib.suppress(Exception):
            _internal_kv_del(exit_key(self.instance, replica_id), namespace=KV_NAMESPACE)
        self._pending_since.pop(replica_id, None)
        self._placed_on.pop(replica_id, None)
        self._info_asked.pop(replica_id, None)

    def address_of(self, replica_id: str) -> Address | None:
        """Where the replica's engine answers, once it does; never waits on the cluster.

        The actor is asked once and its answer picked up on a later call: a replica still waiting for
        its placement, or its engine still starting, costs a pass nothing.
        """
        ref = self._info_asked.get(replica_id)
        if ref is None:
            actor = self._actor(replica_id)
            if actor is None:
                return None
            self._info_asked[replica_id] = actor.info.remote()
            return None
        done, _ = self._ray.wait([ref], timeout=0)
        if not done:
            return None
        del self._info_asked[replica_id]  # the next call asks again, if this answer had no port yet
        try:
            info = self._ray.get(ref, timeout=CALL_TIMEOUT_S)
        except Exception:  # gone: no address
            return None
        port = info.get("port")
        node = next((n for n in self.ray_nodes() if n.node_id == info.get("node_id")), None)
        if port is None or node is None:
            return None
        return Address(node.ip, int(port))

    # asking for hardware --------------------------------------------------------------------

    def ask_for(self, demand: Sequence[Demand]) -> bool:
        """Ask Ray's autoscaler for the queued shapes (a standing request, replaced each time it changes).

        The same demand twice asks once; answers whether the autoscaler has been asked for it.
        """
        if not self.options.request_resources:
            return False
        bundles: list[dict[str, float]] = []
        for d in demand:
            accel = d.gpu_type.partition("-")[0].upper()
            bundles.extend({"GPU": float(d.gpus), f"{ACCELERATOR_PREFIX}{accel}": 0.001} for _ in range(d.replicas))
        if bundles != self._asked:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
            self._asked = bundles
            if bundles:
                log.info("asked the Ray autoscaler for %d bundle(s): %s", len(bundles), bundles[:4])
        return bool(bundles)
