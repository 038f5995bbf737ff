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
from dedicate.runtimes.base import Handle, LaunchSpec, Node, Runtime
from dedicate.runtimes.nvml import gpu_env
from dedicate.scheduler.placement import Placement
from dedicate.settings import Settings
from dedicate.store.repos import ReplicaWrite, Store

log = logging.getLogger("dedicate.reconciler")


class Launcher:
    def __init__(self, runtime: Runtime, settings: Settings, clock: Clock, failures: Failures,
                 weights: WeightsPreparer) -> None:
        self.runtime = runtime
        self.settings = settings
        self.clock = clock
        self.failures = failures
        self.weights = weights

    async def place(self, store: Store, placements: Sequence[tuple[Endpoint, Placement]], nodes: Sequence[Node],
                    now: datetime) -> None:
        """Record a replica for each placement on its node and slots (one write), then launch them."""
        made = [(ep, self._replica(ep, p, nodes, now)) for ep, p in placements]
        await asyncio.to_thread(store.insert_replicas, [
            (r, ("placed", f"replica {r.id} placed on node {r.node} (slots {','.join(map(str, r.slots))})"))
            for _, r in made])
        failpoints.hit("after_replica_row")
        await self.launch(store, made)

    def _replica(self, ep: Endpoint, p: Placement, nodes: Sequence[Node], now: datetime) -> Replica:
        hw = self.settings.catalog.hardware[ep.hardware]
        model = self.settings.catalog.models[ep.model]
        name = engine_for(self.settings.catalog, model, hw, [n for n in nodes if n.name == p.node]) or hw.engine
        return Replica(
            id=f"r-{uuid.uuid4().hex[:12]}", endpoint_id=ep.id, engine=name,
            node=p.node, slots=tuple(p.slots),
            token=secrets.token_urlsafe(24), address=None, pid=None, process_started=None,
            log_path=None, created_at=now,
            facts=ReplicaFacts(now, None, None, None, 0, None, None, None),
            stop_reason=None, version=1,
        )

    async def launch(self, store: Store, replicas: Sequence[tuple[Endpoint, Replica]]) -> None:
        """Start each replica's process (all in one thread hop), then record them in one write."""
        now = self.clock.now()
        specs: list[tuple[Endpoint, Replica, LaunchSpec]] = []
        writes: list[ReplicaWrite] = []
        failed: list[tuple[Endpoint, Replica, str]] = []
        for ep, r in replicas:
            try:
                spec = await self._spec(ep, r)
            except Exception as exc:
                log.exception("launching replica %s failed", r.id)
                self._refused(ep, r, f"replica {r.id} could not be launched: {exc}", now, writes, failed)
                continue
            if spec is not None:  # None: its weights are being prepared; it stays placed
                specs.append((ep, r, spec))
        launched = await asyncio.to_thread(self._start_all, [spec for _, _, spec in specs])
        for (ep, r, spec), outcome in zip(specs, launched, strict=True):
            if isinstance(outcome, BaseException):
                log.error("launching replica %s failed: %r", r.id, outcome)
                self._refused(ep, r, f"replica {r.id} could not be launched: {outcome}", now, writes, failed)
                continue
            event = ("launched", f"replica {r.id} launched (pid {outcome.pid}, engine {r.engine})")
            writes.append(ReplicaWrite(r, event, {"pid": outcome.pid, "process_started": outcome.started,
                                                  "launched_at": now, "log_path": str(spec.log_path)}))
        if specs:
            failpoints.hit("after_launch")
        if writes:
            done = await asyncio.to_thread(store.update_replicas, writes, now)
            failed = [f for f in failed if f[1].id in done]
            if failed:
                await self.failures.count_all(store, failed, now)

    @staticmethod
    def _refused(ep: Endpoint, r: Replica, msg: str, now: datetime, writes: list[ReplicaWrite],
                 failed: list[tuple[Endpoint, Replica, str]]) -> None:
        writes.append(ReplicaWrite(r, ("failed", msg), {"stop_requested_at": now, "stop_reason": "launch failed",
                                                       "stopped_at": now}))
        failed.append((ep, r, msg))

    def _start_all(self, specs: Sequence[LaunchSpec]) -> list[Handle | BaseException]:
        out: list[Handle | BaseException] = []
        for spec in specs:
            try:
                out.append(self.runtime.launch(spec))
            except Exception as exc:  # one launch that fails never stops the others
                out.append(exc)
        return out

    async def _spec(self, ep: Endpoint, r: Replica) -> LaunchSpec | None:
        log_path = self.settings.replicas_dir / r.id / "engine.log"
        model = self.settings.catalog.models[ep.model]
        spec = engine(r.engine)
        path: Path | None = None
        if spec.weights is not Weights.NONE:
            weights = await self.weights.status(model)
            if isinstance(weights, Preparing):
                return None
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
        return LaunchSpec(replica_id=r.id, argv=argv, env=env, log_path=log_path, node=r.node or "", slots=r.slots)
