"""No slow work inside a pass: the lease outlives a held pass, weights are prepared beside the passes.

A real SQLite store, the fake runtime and the manual clock (docs/architecture.md, "One pass").
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

from dedicate.control.lease import LEASE
from dedicate.control.reconciler import Reconciler
from dedicate.control.weights import WeightsPreparer
from dedicate.domain.catalog import Catalog
from dedicate.domain.models import ModelSpec
from dedicate.domain.records import Address
from tests.control.test_reconciler import World


def test_a_pass_held_longer_than_the_lease_keeps_the_lease_and_loses_no_billing_interval(tmp_path: Path) -> None:
    world = World(tmp_path)
    ep = world.create()
    world.step()
    world.make_all_healthy()
    world.step()  # ready: its billing interval is open
    (interval,) = world.store.intervals(endpoint_id=ep)
    held, release = asyncio.Event(), asyncio.Event()
    healthy = world.healthy

    async def slow_probe(address: Address) -> bool:
        held.set()
        await release.wait()  # a probe that hangs far longer than the lease lasts
        return address.port in healthy

    rec = world.rec  # the same server, now in a slow pass
    rec.upkeep.probe = slow_probe
    rec.lease.heartbeat_s = 0.05
    ttl = rec.lease.ttl_s

    async def scenario() -> tuple[int | None, bool]:
        stop = asyncio.Event()
        loop = asyncio.create_task(rec.run(stop))
        await asyncio.wait_for(held.wait(), 10)
        for _ in range(6):  # three lease lifetimes pass while the pass is held
            world.clock.advance(ttl / 2)
            await asyncio.sleep(0.2)
        contender = await asyncio.to_thread(world.store.acquire_lease, LEASE, "other:1:x", world.clock.now(), ttl)
        release.set()
        await asyncio.sleep(0.3)
        stop.set()
        rec.wake.set()
        await loop
        await rec.settle()
        return contender, rec.is_leader

    contender, leader = asyncio.run(scenario())
    assert contender is None, "another server could not take the lease while the pass was held"
    assert leader
    got = world.store.intervals(endpoint_id=ep)
    assert len(got) == 1, got
    (after,) = got
    assert after.started_at == interval.started_at, "the same interval: none was closed as an outage"
    assert after.last_seen_at == world.clock.now(), "and the held probe's success extended it"


def test_weights_are_prepared_beside_the_passes_with_their_own_message(tmp_path: Path) -> None:
    world = World(tmp_path)
    (model,) = world.settings.catalog.models.values()
    builtin = ModelSpec(model.name, model.family, model.params_b, model.context_length, model.dtype,
                        model.num_layers, model.num_kv_heads, model.head_dim, model.engines, source="builtin:slow")
    world.settings = replace(world.settings, catalog=Catalog.build(
        world.settings.catalog.hardware.values(), [builtin], world.settings.catalog.engines))
    world.svc.settings = world.settings
    done = threading.Event()
    built: list[str] = []

    def slow_build(models_dir: Path, spec: ModelSpec) -> Path:
        done.wait(30)  # a 10-minute build, as far as the passes can tell
        built.append(spec.name)
        return models_dir / "slow"

    rec = Reconciler(world.store, world.runtime, world.settings, world.clock,
                     weights=WeightsPreparer(world.settings.models_dir, world.clock, prepare=slow_build))
    ep = world.create()

    async def scenario() -> list[str]:
        messages = []
        for _ in range(3):  # passes go on, and end, while the weights are being built
            world.clock.advance(1)
            await asyncio.wait_for(rec.pass_once(), 10)
            got = world.store.get_endpoint(ep)
            assert got is not None
            messages.append(got.status_message)
        assert world.runtime.processes == {}, "nothing is launched before its weights are ready"
        (placed,) = world.store.replicas_of(ep)
        assert placed.facts.launched_at is None and placed.status.value == "placed"
        done.set()
        for _ in range(50):
            await asyncio.sleep(0.05)
            world.clock.advance(1)
            await rec.pass_once()
            if world.runtime.processes:
                break
        return messages

    messages = asyncio.run(scenario())
    assert all("preparing the weights of" in m for m in messages[1:]), messages
    assert built == [builtin.name], "built once"
    (launched,) = world.store.replicas_of(ep)
    assert launched.facts.launched_at is not None, "launched once its weights were ready"
    (process,) = world.runtime.processes.values()
    assert str(world.settings.models_dir / "slow") in process.spec.argv
