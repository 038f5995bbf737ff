"""Launching: a placement becomes a replica row, then a process through the runtime.

The row is written before the process starts (a crash in between leaves a
row the next pass launches), and the process is found again by its labels if
the crash came after it started (the next pass adopts it). A replica whose
weights are still being prepared stays placed until they are ready.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from dedicate.clock import Clock
from dedicate.control import failpoints
from dedicate.control.capacity import engine_for
from dedicate.control.failures import Failures
from dedicate.control.weights import Failed, Preparing, WeightsPreparer
from dedicate.domain.records import Endpoint, Replica
from dedicate.domain.replicas import ReplicaFacts
from dedicate.engines.registry import EngineLaunch, Weights, engine
from dedicate.runtimes.base import LaunchSpec, Node, Runtime
from dedicate.runtimes.nvml import gpu_env
from dedicate.scheduler.placement import Placement
from dedicate.settings import Settings
from dedicate.store.repos import Store

log = logging.getLogger("dedicate.reconciler")


class Launcher:
    def __init__(self, runtime: Runtime, settings: Settings, clock: Clock, failures: Failures,
                 weights: WeightsPreparer) -> None:
        self.runtime = runtime
        self.settings = settings
        self.clock = clock
        self.failures = failures
        self.weights = weights

    async def place(self, store: Store, ep: Endpoint, p: Placement, nodes: Sequence[Node], now: datetime) -> None:
        """Record a replica of ``ep`` on the placement's node and slots, then launch it."""
        hw = self.settings.catalog.hardware[ep.hardware]
        model = self.settings.catalog.models[ep.model]
        name = engine_for(self.settings.catalog, model, hw, [n for n in nodes if n.name == p.node]) or hw.engine
        replica = Replica(
            id=f"r-{uuid.uuid4().hex[:12]}", endpoint_id=ep.id, engine=name,
            node=p.node, slots=tuple(p.slots),
            token=secrets.token_urlsafe(24), address=None, pid=None, process_started=None,
            log_path=None, created_at=now,
            facts=ReplicaFacts(now, None, None, None, 0, None, None, None),
            stop_reason=None, version=1,
        )
        await asyncio.to_thread(
            store.insert_replica, replica,
            ("placed", f"replica {replica.id} placed on node {p.node} (slots {','.join(map(str, p.slots))})"))
        failpoints.hit("after_replica_row")
        await self.launch(store, ep, replica)

    async def launch(self, store: Store, ep: Endpoint, r: Replica) -> None:
        now = self.clock.now()
        log_path = self.settings.replicas_dir / r.id / "engine.log"
        try:
            model = self.settings.catalog.models[ep.model]
            spec = engine(r.engine)
            path: Path | None = None
            if spec.weights is not Weights.NONE:
                weights = await self.weights.status(model)
                if isinstance(weights, Preparing):
                    return  # it stays placed; the next pass looks again
                if isinstance(weights, Failed):
                    raise RuntimeError(weights.reason)
                path = weights.path
            binding = self.runtime.binding(r.id, r.node or "")
            argv = spec.command(EngineLaunch(
                model_dir=path, served_model_name=ep.name, replica_id=r.id,
                instance=self.runtime.instance, port_file=binding.port_file, host=binding.host,
                options=self.settings.engine_options.get(r.engine, {}), model_name=model.name,
                gpu_count=len(r.slots) or 1))
            node = next((n for n in self.runtime.nodes() if n.name == r.node), None)
            env = {"DEDICATE_REPLICA_TOKEN": r.token, "OMP_NUM_THREADS": "1",
                   "TOKENIZERS_PARALLELISM": "false"}
            if node is not None and node.gpu_type != "cpu" and not node.declared:
                env.update(gpu_env(node, list(r.slots)))
            else:
                env["CUDA_VISIBLE_DEVICES"] = ""
            handle = await asyncio.to_thread(self.runtime.launch, LaunchSpec(
                replica_id=r.id, argv=argv, env=env, log_path=log_path, node=r.node or "", slots=r.slots))
        except Exception as exc:
            log.exception("launching replica %s failed", r.id)
            msg = f"replica {r.id} could not be launched: {exc}"
            ok = await asyncio.to_thread(
                store.update_replica, r, now, ("failed", msg),
                stop_requested_at=now, stop_reason="launch failed", stopped_at=now)
            if ok:
                await self.failures.count(store, ep, r, now, msg)
            return
        failpoints.hit("after_launch")
        await asyncio.to_thread(
            store.update_replica, r, now,
            ("launched", f"replica {r.id} launched (pid {handle.pid}, engine {r.engine})"),
            pid=handle.pid, process_started=handle.started, launched_at=now, log_path=str(log_path))
