"""Capacity end to end in the control plane: GPU pools on declared nodes, the queue, yielding,
quotas and the reconciler lease. Real store (SQLite, and PostgreSQL for the races), fake runtime."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from dedicate.clock import ManualClock
from dedicate.control.auth import Principal
from dedicate.control.inputs import BudgetUpdate, CreateEndpoint, EndpointPatch, QuotaUpdate
from dedicate.control.reconciler import Reconciler
from dedicate.control.services import Services
from dedicate.domain.catalog import Catalog, cpu_hardware, hardware_from_config
from dedicate.domain.errors import QuotaExceeded
from dedicate.domain.models import TINY_CHAT, ModelSpec
from dedicate.domain.records import Address
from dedicate.runtimes.base import Node
from dedicate.runtimes.fake import FakeRuntime
from dedicate.settings import load_settings
from dedicate.store.base import StaleLease
from dedicate.store.db import make_engine, migrate
from dedicate.store.repos import Store

ALICE = Principal("alice", False, "k1")
BOB = Principal("bob", False, "k2")
ADMIN = Principal("admin", True, "k0")


class Fleet:
    def __init__(self, tmp_path: Path, nodes: list[Node], db_url: str | None = None) -> None:
        base = load_settings({"DEDICATE_DATA_DIR": str(tmp_path)})
        model = ModelSpec(TINY_CHAT, "tiny", 0.0005, 2048, "float32", 2, 2, 16, ("transformers",),
                          source=str(tmp_path / "weights"))
        shapes = [hardware_from_config(f"{n}x_nvidia_h100_80gb_sxm", Decimal("5.6") * n, "transformers", 12)
                  for n in (1, 2, 4, 8)]
        catalog = Catalog.build([*shapes, cpu_hardware(12, Decimal("0.05"), "transformers")], [model],
                                ["transformers"])
        self.settings = replace(base, catalog=catalog, probe_interval_s=0)  # every pass probes
        engine = make_engine(db_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
        migrate(engine)
        self.store = Store(engine)
        self.clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
        self.runtime = FakeRuntime(nodes)
        self.rec = self.reconciler()
        self.svc = Services(self.store, self.settings, self.clock, self.runtime.nodes, lambda: None)

    def reconciler(self) -> Reconciler:
        async def probe(address: Address) -> bool:
            return True  # every launched replica is healthy at once

        return Reconciler(self.store, self.runtime, self.settings, self.clock, probe=probe)

    def create(self, who: Principal, gpus: int, min_r: int, max_r: int | None = None) -> str:
        return self.svc.create(who, CreateEndpoint.model_validate({
            "model": TINY_CHAT, "hardware": f"{gpus}x_nvidia_h100_80gb_sxm",
            "autoscaling": {"min_replicas": min_r, "max_replicas": max_r or min_r}}), dry_run=False).endpoint.id

    def settle(self, passes: int = 4, rec: Reconciler | None = None) -> None:
        r = rec or self.rec

        async def run() -> None:
            for _ in range(passes):
                self.clock.advance(1)
                await r.pass_once()
                await r.settle()

        asyncio.run(run())

    def ep(self, endpoint_id: str) -> dict[str, object]:
        view = self.svc.get(ADMIN, endpoint_id)
        e = view.endpoint
        return {"state": e.state.value, "running": sum(1 for r in view.replicas if r.facts.stop_requested_at is None),
                "queued": e.queued_replicas, "position": e.queue_position, "message": e.status_message}


def h100_node(name: str = "node-a", gpus: int = 8) -> Node:
    return Node(name, "h100-80gb", gpus, declared=True, engine="transformers")


def test_partial_scaling_runs_what_fits_and_says_why_the_rest_waits(tmp_path: Path) -> None:
    f = Fleet(tmp_path, [h100_node(gpus=4)])
    e = f.create(ALICE, 1, 2, 6)
    f.svc.set_desired_replicas(e, 6, reason="test")
    f.settle()
    got = f.ep(e)
    assert got["state"] == "STARTED" and got["running"] == 4 and got["queued"] == 2
    assert "4 of 6 replicas ready" in str(got["message"]) and "availability limited" in str(got["message"])


def test_the_queue_shows_positions_and_drains_by_itself_when_capacity_frees(tmp_path: Path) -> None:
    f = Fleet(tmp_path, [h100_node()])
    a = f.create(ALICE, 8, 1)
    f.settle()
    b = f.create(BOB, 8, 1)
    f.clock.advance(1)
    c = f.create(BOB, 4, 1)
    f.settle()
    assert f.ep(a)["state"] == "STARTED"
    assert (f.ep(b)["state"], f.ep(b)["position"]) == ("PENDING", 1)
    assert (f.ep(c)["state"], f.ep(c)["position"]) == ("PENDING", 2), "c fits nowhere either: a holds all 8"
    assert "queued: position 1 for 1 replica(s) of 8x h100-80gb" in str(f.ep(b)["message"])
    queue = [(q.endpoint.id, q.position) for q in f.svc.queue_view(ADMIN)]
    assert queue == [(b, 1), (c, 2)]
    f.svc.update(ALICE, a, EndpointPatch(state="STOPPED"))
    f.settle(6)
    assert f.ep(a)["state"] == "STOPPED"
    assert f.ep(b)["state"] == "STARTED" and f.ep(b)["position"] is None
    assert (f.ep(c)["state"], f.ep(c)["position"]) == ("PENDING", 1)
    kinds = [ev.kind for ev in f.store.events(b)]
    assert "queued" in kinds and "placed" in kinds


def test_surplus_yields_to_another_endpoints_queued_minimum(tmp_path: Path) -> None:
    f = Fleet(tmp_path, [h100_node()])
    rich = f.create(ALICE, 1, 1, 8)
    f.svc.set_desired_replicas(rich, 8, reason="load")
    f.settle()
    assert f.ep(rich)["running"] == 8
    head = f.create(BOB, 4, 1)
    f.settle(6)
    assert f.ep(head)["state"] == "STARTED"
    assert f.ep(rich)["running"] == 4 and f.ep(rich)["queued"] == 4
    assert f.ep(rich)["state"] == "STARTED", "its minimum was never touched"
    yielded = [ev.message for ev in f.store.events(rich) if ev.kind == "yielded"]
    assert len(yielded) == 4 and all("queued minimum" in m for m in yielded)


def test_raising_min_queues_only_the_extra_replicas_at_the_back(tmp_path: Path) -> None:
    f = Fleet(tmp_path, [h100_node()])
    a = f.create(ALICE, 4, 1)
    f.settle()
    waiting = f.create(BOB, 8, 1)
    f.settle()
    assert f.ep(waiting)["position"] == 1
    f.svc.update(ALICE, a, EndpointPatch.model_validate({"autoscaling": {"min_replicas": 2, "max_replicas": 2}}))
    f.settle()
    got = f.ep(a)
    assert got["running"] == 1 and got["state"] == "STARTED", "its running replica is untouched"
    assert got["position"] == 2, "the extra minimum waits behind the earlier queue"


def test_a_quota_caps_an_owners_gpus_with_use_and_cap_in_the_message(tmp_path: Path) -> None:
    f = Fleet(tmp_path, [h100_node()])
    f.svc.set_quota(ADMIN, "alice", QuotaUpdate(gpus=4))
    f.create(ALICE, 2, 1)
    with pytest.raises(QuotaExceeded, match="2 GPU\\(s\\) committed of a quota of 4"):
        f.create(ALICE, 4, 1)
    assert f.svc.quota(ALICE, "alice").gpus_committed == 2


def test_stop_while_pending_leaves_the_queue(tmp_path: Path) -> None:
    f = Fleet(tmp_path, [h100_node()])
    f.create(ALICE, 8, 1)
    f.settle()
    b = f.create(BOB, 8, 1)
    c = f.create(BOB, 8, 1)
    f.settle()
    f.svc.update(BOB, b, EndpointPatch(state="STOPPED"))
    f.settle()
    assert f.ep(b)["state"] == "STOPPED" and f.ep(b)["position"] is None
    assert f.ep(c)["position"] == 1


def test_only_the_lease_holder_acts_and_a_stale_holder_cannot_write(tmp_path: Path, db_url: str) -> None:
    f = Fleet(tmp_path, [h100_node()], db_url=db_url)
    first, second = f.rec, f.reconciler()
    second.holder = "other-process:1"
    e = f.create(ALICE, 1, 1)
    f.settle(2, rec=second)
    assert second.is_leader and f.ep(e)["running"] == 1
    f.settle(2, rec=first)
    assert not first.is_leader, "the lease is held and not expired"
    assert len(f.runtime.running()) == 1

    f.clock.advance(60)  # the holder stops renewing: its lease expires
    f.settle(1, rec=first)
    assert first.is_leader
    token = f.store.lease("reconciler")
    assert token is not None and token[1] == 2, "taking the lease over bumps the fencing token"
    stale = second.store  # still fenced with token 1
    endpoint = f.store.get_endpoint(e)
    assert endpoint is not None
    with pytest.raises(StaleLease):
        stale.update_endpoint(endpoint, f.clock.now(), None, status_message="zombie write")


def test_racing_patches_on_one_endpoint_all_apply_and_none_is_lost(tmp_path: Path, db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    f = Fleet(tmp_path, [h100_node()], db_url=db_url)
    e = f.create(ALICE, 1, 1, 8)

    def patch(n: int) -> str:
        return f.svc.update(ALICE, e, EndpointPatch.model_validate({"display_name": f"name-{n}"})).endpoint.display_name

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(patch, range(4)))
    assert len(results) == 4
    final = f.store.get_endpoint(e)
    assert final is not None and final.display_name in {f"name-{n}" for n in range(4)}
    assert final.version == 5, "every patch applied once, on top of the one before it"


def test_starting_and_raising_bounds_in_one_patch_respects_the_quota_and_the_bounds(tmp_path: Path) -> None:
    f = Fleet(tmp_path, [h100_node()])
    f.svc.set_quota(ADMIN, "alice", QuotaUpdate(gpus=2))
    e = f.create(ALICE, 1, 1)
    f.svc.update(ALICE, e, EndpointPatch(state="STOPPED"))
    with pytest.raises(QuotaExceeded):
        f.svc.update(ALICE, e, EndpointPatch.model_validate(
            {"state": "STARTED", "autoscaling": {"min_replicas": 6, "max_replicas": 6}}))
    got = f.svc.update(ALICE, e, EndpointPatch.model_validate(
        {"state": "STARTED", "autoscaling": {"min_replicas": 2, "max_replicas": 2}}))
    assert (got.endpoint.min_replicas, got.endpoint.desired_replicas, got.endpoint.max_replicas) == (2, 2, 2)
    f.settle()
    assert f.ep(e)["running"] == 2 and f.ep(e)["state"] == "STARTED"


def test_a_nan_budget_is_a_clear_400_not_a_500(tmp_path: Path) -> None:
    from dedicate.domain.errors import InvalidRequest

    f = Fleet(tmp_path, [h100_node()])
    with pytest.raises(InvalidRequest, match="finite, non-negative"):
        f.svc.billing.set_budget(ALICE, BudgetUpdate.model_validate({"monthly_cents": "NaN"}))


# -------------------------------------------------------------------------------- a cluster's runtime


def test_what_waits_for_hardware_is_asked_of_the_cluster_and_the_message_says_new_nodes_are_awaited(
        tmp_path: Path) -> None:
    from dedicate.runtimes.base import Demand

    f = Fleet(tmp_path, [h100_node(gpus=4)])
    e = f.create(ALICE, 2, 1, 4)
    f.svc.set_desired_replicas(e, 4, reason="test")
    f.settle()
    assert f.ep(e)["running"] == 2 and f.ep(e)["queued"] == 2
    assert f.runtime.asks[-1] == (Demand("h100-80gb", 2, 2),), "the queued shapes, as one standing request"
    assert "waiting for new nodes" in str(f.ep(e)["message"])
    f.runtime.node_list.append(h100_node("node-b", 4))  # the autoscaler added a node
    f.settle()
    assert f.ep(e)["running"] == 4 and f.ep(e)["queued"] == 0
    assert f.runtime.asks[-1] == (), "nothing waits: the request is withdrawn"
    assert "new nodes" not in str(f.ep(e)["message"])


def test_a_replica_the_runtime_could_not_place_is_queued_again_with_the_reason_never_counted_as_a_failure(
        tmp_path: Path) -> None:
    f = Fleet(tmp_path, [h100_node(gpus=4)])
    e = f.create(ALICE, 4, 1)
    for attempt in range(5):  # more than max_failures_before_ready: yet never ERROR
        f.settle(1)
        (rid,) = [p.spec.replica_id for p in f.runtime.processes.values() if p.running]
        f.runtime.unplace(rid, "Ray could not place 4 GPU(s) within 60 s on node-a; queued again")
        f.settle(1)
        got = f.ep(e)
        assert got["state"] != "ERROR", attempt
        assert "Ray could not place 4 GPU(s)" in str(got["message"]), got
        assert "failure" not in str(got["message"]), got
        f.clock.advance(10)  # past the hold
    view = f.svc.get(ADMIN, e)
    assert view.endpoint.failures_before_ready == 0
    kinds = [ev.kind for ev in f.store.events(e)]
    assert kinds.count("unplaced") == 5 and "failed" not in kinds, kinds
    f.settle(2)
    assert f.ep(e)["state"] == "STARTED", "placed once the runtime can"


def test_a_region_the_runtime_names_is_a_zone_and_each_zone_has_the_headroom_of_its_own_nodes(
        tmp_path: Path) -> None:
    from dedicate.control.offerings import Offerings

    east = replace(h100_node("east-1", 8), region="us-east-1")
    f = Fleet(tmp_path, [h100_node("here", 4), east])
    assert f.svc.availability_zones() == ["local", "us-east-1"]
    (h8,) = [t for t in Offerings(f.svc, f.clock.now()).instance_types() if t.hardware.id == "8x_nvidia_h100_80gb_sxm"]
    (h4,) = [t for t in Offerings(f.svc, f.clock.now()).instance_types() if t.hardware.id == "4x_nvidia_h100_80gb_sxm"]
    assert dict(h8.headroom) == {"local": 0, "us-east-1": 1}
    assert dict(h4.headroom) == {"local": 1, "us-east-1": 2}
