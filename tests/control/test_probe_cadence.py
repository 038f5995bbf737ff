"""Probes on their own cadence: a ready, passing replica is probed every probe_interval_s, the rest every pass."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from dedicate.control.reconciler import Reconciler
from dedicate.domain.records import Address
from dedicate.domain.replicas import ReplicaStatus
from tests.control.test_reconciler import World

INTERVAL = 10.0


class CountedWorld(World):
    """The reconciler's world with a probe interval, counting the probes each replica's port gets."""

    def __init__(self, tmp_path: Path, slots: int = 8) -> None:
        super().__init__(tmp_path, slots)
        self.settings = replace(self.settings, probe_interval_s=INTERVAL)
        self.probes: Counter[int] = Counter()

        async def probe(address: Address) -> bool:
            self.probes[address.port] += 1
            return address.port in self.healthy

        self.rec = Reconciler(self.store, self.runtime, self.settings, self.clock, probe=probe)


def ready_world(tmp_path: Path, replicas: int) -> tuple[CountedWorld, str]:
    world = CountedWorld(tmp_path)
    ep = world.ready_endpoint(replicas)
    world.probes.clear()
    return world, ep


def test_a_ready_replica_is_probed_once_an_interval_not_every_pass(tmp_path: Path) -> None:
    world, _ = ready_world(tmp_path, 1)
    for _ in range(30):  # 30 passes a second apart: three intervals
        world.step(1.0)
    (count,) = world.probes.values()
    assert 2 <= count <= 4, f"about one probe each {INTERVAL:g} s, not one a pass: {count} in 30 passes"


def test_a_starting_replica_is_probed_every_pass(tmp_path: Path) -> None:
    world = CountedWorld(tmp_path)
    world.create()
    world.step()
    for _ in range(5):
        world.step(1.0)
    assert sum(world.probes.values()) >= 5, "a replica not ready yet is probed each pass"


def test_probes_of_replicas_ready_together_spread_over_the_interval(tmp_path: Path) -> None:
    world, _ = ready_world(tmp_path, 8)
    per_pass = []
    for _ in range(int(INTERVAL)):
        before = sum(world.probes.values())
        world.step(1.0)
        per_pass.append(sum(world.probes.values()) - before)
    assert sum(per_pass) == 8, f"each replica once an interval: {per_pass}"
    assert max(per_pass) < 8, f"not all on one pass: {per_pass}"


def test_a_replica_that_failed_a_probe_is_probed_every_pass_until_replaced(tmp_path: Path) -> None:
    world, ep = ready_world(tmp_path, 1)
    world.healthy = set()
    passes = 0
    while world.replicas(ep)[0] is ReplicaStatus.READY and passes < 3 * INTERVAL:
        world.step(1.0)
        passes += 1
    # found within one interval, then one probe a pass up to the threshold (3): stopping
    assert world.replicas(ep)[0] is ReplicaStatus.STOPPING or ReplicaStatus.STOPPED in world.replicas(ep)
    assert passes <= INTERVAL + world.settings.probe_failure_threshold, passes


def test_a_ready_replica_is_billed_up_to_its_last_good_probe(tmp_path: Path) -> None:
    world, ep = ready_world(tmp_path, 1)
    for _ in range(25):
        world.step(1.0)
    (r,) = world.store.live_replicas(ep)
    (interval,) = world.store.intervals(endpoint_id=ep)
    assert r.facts.first_ready_at is not None
    seen = (interval.last_seen_at - interval.started_at).total_seconds()
    assert 25 - INTERVAL <= seen <= 25, f"billed to the last probe, at most an interval ago: {seen} s of 25"
