"""The reconciler against a real SQLite store, the fake runtime and a fake clock.

Adoption after a crash is also checked with the local runtime and real child processes,
counted by pid from /proc.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dedicate.clock import ManualClock
from dedicate.control import failpoints
from dedicate.control.auth import Principal
from dedicate.control.inputs import CreateEndpoint, EndpointPatch
from dedicate.control.reconciler import Reconciler
from dedicate.control.services import Services
from dedicate.domain.catalog import Catalog, cpu_hardware
from dedicate.domain.models import TINY_CHAT, ModelSpec
from dedicate.domain.records import Address
from dedicate.domain.replicas import ReplicaStatus
from dedicate.runtimes.base import Handle, LaunchSpec, Node
from dedicate.runtimes.fake import FakeRuntime
from dedicate.runtimes.local import LocalRuntime
from dedicate.settings import load_settings
from dedicate.store.db import make_engine, migrate
from dedicate.store.repos import Store
from tests.e2e.harness import instance_processes, kill_instance_processes

ADMIN = Principal("alice", False, "key_test")


class World:
    def __init__(self, tmp_path: Path, slots: int = 2) -> None:
        base = load_settings({"DEDICATE_DATA_DIR": str(tmp_path)})
        model = ModelSpec(TINY_CHAT, "tiny", 0.0005, 2048, "float32", 2, 2, 16, ("transformers",),
                          source=str(tmp_path / "weights"))
        from decimal import Decimal

        catalog = Catalog.build([cpu_hardware(12, Decimal("0.05"), "transformers")], [model], ["transformers"])
        # Every pass probes every replica: these tests count probes by passes (the cadence has its own).
        self.settings = replace(base, catalog=catalog, cpu_slots=slots, probe_interval_s=0)
        engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
        migrate(engine)
        self.store = Store(engine)
        self.clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
        self.runtime = FakeRuntime([Node("local", "cpu", slots)])
        self.healthy: set[int] = set()  # ports whose /health answers

        async def probe(address: Address) -> bool:
            return address.port in self.healthy

        self.rec = Reconciler(self.store, self.runtime, self.settings, self.clock, probe=probe)
        self.svc = Services(self.store, self.settings, self.clock, self.runtime.nodes, lambda: None)

    def create(self, min_r: int = 1, max_r: int = 1) -> str:
        view = self.svc.create(ADMIN, CreateEndpoint.model_validate({
            "model": TINY_CHAT, "hardware": "1x_cpu", "autoscaling": {"min_replicas": min_r, "max_replicas": max_r}}),
                               dry_run=False)
        return view.endpoint.id

    def step(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)

        async def run() -> None:
            await self.rec.pass_once()
            await self.rec.settle()

        asyncio.run(run())

    def running_pids(self, replica_id: str | None = None) -> list[int]:
        """Every running fake process (of ``replica_id``), one per launch: a second launch shows."""
        return sorted(pid for pid, p in self.runtime.processes.items()
                      if p.running and replica_id in (None, p.spec.replica_id))

    def ready_endpoint(self, replicas: int) -> str:
        """An endpoint of ``replicas`` replicas, brought to all ready by two passes."""
        ep = self.create(replicas, replicas)
        self.step()
        self.make_all_healthy()
        self.step()
        assert self.replicas(ep) == [ReplicaStatus.READY] * replicas
        return ep

    def make_all_healthy(self) -> None:
        self.healthy = {p.port for p in self.runtime.processes.values() if p.port is not None}

    def state(self, endpoint_id: str) -> str:
        ep = self.store.get_endpoint(endpoint_id, include_deleted=True)
        assert ep is not None
        return ep.state.value

    def replicas(self, endpoint_id: str) -> list[ReplicaStatus]:
        return [r.status for r in self.store.replicas_of(endpoint_id)]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_endpoint_starts_once_its_replica_passes_the_probe(world: World) -> None:
    ep = world.create()
    world.step()
    assert world.state(ep) == "STARTING"
    assert world.replicas(ep) == [ReplicaStatus.STARTING]
    world.step()  # not healthy yet: still starting
    assert world.state(ep) == "STARTING"
    world.make_all_healthy()
    world.step()
    assert world.state(ep) == "STARTED"
    assert world.replicas(ep) == [ReplicaStatus.READY]
    assert len(world.runtime.running()) == 1


def test_passes_are_idempotent_and_never_start_duplicates(world: World) -> None:
    ep = world.create()
    for _ in range(5):
        world.step()
    world.make_all_healthy()
    for _ in range(5):
        world.step()
    assert len(world.runtime.running()) == 1
    assert len(world.store.replicas_of(ep)) == 1


def test_stop_while_starting_kills_the_replica_and_it_never_became_ready(world: World) -> None:
    ep = world.create()
    world.step()
    assert world.state(ep) == "STARTING"
    world.svc.update(ADMIN, ep, EndpointPatch(state="STOPPED"))
    world.step()  # asks the replica to stop
    world.step()  # stops it
    world.step()  # sees it gone
    assert world.state(ep) == "STOPPED"
    assert world.runtime.running() == {}
    (r,) = world.store.replicas_of(ep)
    assert r.facts.first_ready_at is None and r.facts.stopped_at is not None


def test_stop_then_start_goes_back_through_placement(world: World) -> None:
    ep = world.create()
    world.step()
    world.make_all_healthy()
    world.step()
    world.svc.update(ADMIN, ep, EndpointPatch(state="STOPPED"))
    world.step()  # asks the replica to stop
    world.step()  # stops it
    world.step()  # sees it gone
    assert world.state(ep) == "STOPPED"
    world.svc.update(ADMIN, ep, EndpointPatch(state="STARTED"))
    world.step()
    world.make_all_healthy()
    world.step()
    assert world.state(ep) == "STARTED"
    assert len(world.store.replicas_of(ep)) == 2  # the old one stopped, a new one placed
    assert len(world.runtime.running()) == 1


def test_repeated_failures_before_ready_end_in_error_with_backoff(world: World) -> None:
    ep = world.create()
    launches = []
    for _ in range(3):
        world.step()
        running = world.runtime.running()
        assert len(running) == 1, "a replica is launched after each backoff"
        (rid,) = running
        launches.append(rid)
        world.runtime.crash(rid, code=3)
        world.step()
        assert world.runtime.running() == {}, "no relaunch during the backoff"
        world.step(70)  # past the longest backoff
    assert len(set(launches)) == 3
    assert world.state(ep) == "ERROR"
    ep_now = world.store.get_endpoint(ep)
    assert ep_now is not None and "exited with code 3" in ep_now.status_message
    world.step(100)
    assert world.runtime.running() == {}, "no endless restart loop in ERROR"
    world.svc.update(ADMIN, ep, EndpointPatch(state="STARTED"))
    world.step()
    assert world.state(ep) == "STARTING", "start from ERROR resets the failure count"


def test_a_ready_replica_that_dies_is_replaced(world: World) -> None:
    ep = world.create()
    world.step()
    world.make_all_healthy()
    world.step()
    (rid,) = world.runtime.running()
    world.runtime.crash(rid)
    world.step()
    world.step(5)
    running = world.runtime.running()
    assert len(running) == 1 and rid not in running
    world.make_all_healthy()
    world.step()
    assert world.state(ep) == "STARTED"


def test_three_failed_probes_in_a_row_replace_a_replica_but_one_does_not(world: World) -> None:
    ep = world.create()
    world.step()
    world.make_all_healthy()
    world.step()
    (rid,) = world.runtime.running()
    world.healthy = set()
    world.step()
    world.step()
    assert rid in world.runtime.running(), "two failures are tolerated"
    assert world.state(ep) == "STARTED"
    world.step()
    world.step()
    assert rid not in world.runtime.running()
    events = [e.kind for e in world.store.events(ep)]
    assert "unhealthy" in events


def test_orphan_processes_without_a_replica_row_are_stopped(world: World) -> None:
    from dedicate.runtimes.base import LaunchSpec

    world.runtime.launch(LaunchSpec("r-orphan", ["x"], {}, Path("/dev/null"), "local", (0,)))
    world.step()
    assert "r-orphan" not in world.runtime.running()


def test_a_process_launched_before_a_crash_but_never_recorded_is_adopted(world: World) -> None:
    ep = world.create()
    world.step()
    (r,) = world.store.replicas_of(ep)
    assert r.pid is not None and world.running_pids() == [r.pid], "one process, launched once"
    # Simulate the crash window: the row says "placed, not launched" but the process runs.
    with world.store.tx() as s:
        from sqlalchemy import update

        from dedicate.store.tables import ReplicaRow
        # A write, as every write to a row: its version moves.
        s.execute(update(ReplicaRow).values(launched_at=None, pid=None, version=ReplicaRow.version + 1))
    (crashed,) = world.store.replicas_of(ep)
    assert crashed.facts.launched_at is None and crashed.pid is None, "the launch is not recorded"
    assert world.running_pids(r.id) == [r.pid], "while its process runs"
    world.step()
    assert len(world.runtime.running()) == 1
    (r2,) = world.store.replicas_of(ep)
    assert r2.id == r.id and r2.pid is not None
    assert world.running_pids() == [r.pid], "the process launched before the crash runs, once: no second launch"
    assert len(world.runtime.processes) == 1, "launched once in all"
    assert r2.pid == r.pid and r2.facts.launched_at is not None, "its row now records that process"
    assert "adopted" in [e.kind for e in world.store.events(ep)]


class Crash(Exception):
    """The server dying at a failpoint, without leaving the test process."""


class CountingRuntime(LocalRuntime):
    """The local runtime, real child processes and all, that also keeps every launch's handle."""

    def __init__(self, data_dir: Path, instance: str, nodes: list[Node]) -> None:
        super().__init__(data_dir, instance, nodes)
        self.launched: list[Handle] = []

    def launch(self, spec: LaunchSpec) -> Handle:
        # A tiny real replica in place of the engine: what LocalRuntime.running() finds is its argv's labels.
        sleeper = [sys.executable, "-c", "import time; time.sleep(120)",
                   "--replica-id", spec.replica_id, "--instance", self.instance]
        handle = super().launch(dataclasses.replace(spec, argv=sleeper))
        self.launched.append(handle)
        return handle


@pytest.fixture
def local_runtime(world: World) -> Iterator[Callable[[], CountingRuntime]]:
    """One local runtime per server of a fresh instance id; no process of it outlives the test."""
    instance = f"test-{uuid.uuid4().hex[:12]}"
    made: list[CountingRuntime] = []

    def make() -> CountingRuntime:
        made.append(CountingRuntime(world.settings.data_dir, instance, world.runtime.nodes()))
        return made[-1]

    yield make
    for runtime in made:  # each child is stopped and reaped by the runtime that launched it
        for handle in runtime.launched:
            runtime.stop(handle, 2.0)
    assert kill_instance_processes(instance) == [], "a process of the instance outlived SIGKILL"


def test_a_real_process_launched_before_a_crash_is_adopted_by_the_next_server_not_launched_again(
        world: World, local_runtime: Callable[[], CountingRuntime], monkeypatch: pytest.MonkeyPatch) -> None:
    def crash_after_launch(name: str) -> None:
        if name == "after_launch":
            raise Crash(name)

    def run_pass(rec: Reconciler) -> None:
        async def run() -> None:
            await rec.pass_once()
            await rec.settle()
        asyncio.run(run())

    async def never_ready(address: Address) -> bool:
        return False

    monkeypatch.setattr(failpoints, "hit", crash_after_launch)
    first_runtime = local_runtime()
    instance = first_runtime.instance
    first = Reconciler(world.store, first_runtime, world.settings, world.clock, probe=never_ready)
    ep = world.create()
    with pytest.raises(Crash):
        run_pass(first)
    (r,) = world.store.replicas_of(ep)
    assert r.facts.launched_at is None and r.pid is None, "the crash came before the launch was recorded"
    at_crash = instance_processes(instance)
    assert [p.replica_id for p in at_crash] == [r.id], "and after its process was launched"
    assert [h.pid for h in first_runtime.launched] == [at_crash[0].pid]

    monkeypatch.setattr(failpoints, "hit", lambda name: None)  # the next server runs without failpoints
    world.clock.advance(60)  # the crashed server's lease runs out
    second_runtime = local_runtime()
    second = Reconciler(world.store, second_runtime, world.settings, world.clock, probe=never_ready)
    for _ in range(3):
        run_pass(second)
        world.clock.advance(1)
    assert second.is_leader
    assert instance_processes(instance) == at_crash, "the process launched before the crash runs, once"
    assert second_runtime.launched == [], "the next server launched nothing"
    (adopted,) = world.store.replicas_of(ep)
    assert (adopted.pid, adopted.process_started) == (at_crash[0].pid, at_crash[0].started), \
        "its row records the process launched before the crash"
    assert adopted.facts.launched_at is not None and adopted.facts.stopped_at is None
    kinds = [e.kind for e in world.store.events(ep)]
    assert "adopted" in kinds and "launched" not in kinds


def test_raising_min_replicas_adds_replicas_without_touching_the_others(world: World) -> None:
    ep = world.create(1, 2)
    world.step()
    world.make_all_healthy()
    world.step()
    (first,) = world.runtime.running()
    world.svc.update(ADMIN, ep, EndpointPatch.model_validate({"autoscaling": {"min_replicas": 2}}))
    world.step()
    world.make_all_healthy()
    world.step()
    running = world.runtime.running()
    assert len(running) == 2 and first in running
    view = world.svc.get(ADMIN, ep)
    assert view.endpoint.max_replicas == 2 and view.endpoint.min_replicas == 2


def test_delete_stops_replicas_and_hides_the_endpoint(world: World) -> None:
    ep = world.create()
    world.step()
    world.make_all_healthy()
    world.step()
    world.svc.delete(ADMIN, ep)
    assert world.store.get_endpoint(ep) is None
    world.step()
    world.step()
    world.step()
    assert world.runtime.running() == {}
    hidden = world.store.get_endpoint(ep, include_deleted=True)
    assert hidden is not None and hidden.deleted_at is not None
