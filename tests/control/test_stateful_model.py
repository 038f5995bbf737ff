"""A stateful model of the control plane: hypothesis drives create / stop / start / scale / patch bounds /
delete / kill a replica / restart the control plane / advance the clock / a node appearing or vanishing,
on the fake runtime and a real SQLite store, and checks after every step (once the reconciler has had a
few passes) what must always hold:

- replicas within bounds while an endpoint runs (fewer only while the rest is queued), none when it is
  stopped or deleted, and never more slots used on a node than it has;
- the queue: positions 1..n in the order endpoints started waiting, and nothing waits behind a later
  arrival that was served while it fits;
- no endpoint lost: every endpoint created and not deleted is still there, with the bounds last set;
- billing: no open interval without a live ready replica, no two intervals of a replica overlapping, no
  charge before a replica was first ready or after it stopped, and the invoice is the sum of the
  intervals' charges.

Bounded so it runs in the test command (``STATEFUL_EXAMPLES``, ``STATEFUL_STEPS`` for longer runs).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)
from sqlalchemy import text

from dedicate.control.auth import Principal
from dedicate.control.inputs import CreateEndpoint, EndpointPatch, Scale
from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.errors import DedicateError
from dedicate.domain.replicas import ReplicaStatus
from dedicate.metering.ledger import month_bounds, month_of, usage
from dedicate.metering.rating import round_cents
from dedicate.runtimes.base import Node
from tests.control.test_capacity import ADMIN, ALICE, BOB, Fleet

EXAMPLES = int(os.environ.get("STATEFUL_EXAMPLES", "12"))
STEPS = int(os.environ.get("STATEFUL_STEPS", "25"))
PASSES = 5  # reconcile passes after each step: enough for a stop, a launch and a first probe to land
GPUS_PER_NODE = 4


@dataclass
class Expected:
    """What the model says an endpoint is: the bounds last set and whether it should run."""

    min_replicas: int
    max_replicas: int
    running: bool


def node(n: int) -> Node:
    return Node(f"node-{n}", "h100-80gb", GPUS_PER_NODE, declared=True, engine="transformers")


class ControlPlane(RuleBasedStateMachine):
    endpoints = Bundle("endpoints")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="dedicate-stateful-"))
        self.fleet = Fleet(self.tmp, [node(0), node(1)])
        self.next_node = 2
        self.expected: dict[str, Expected] = {}
        self.deleted: set[str] = set()
        self.restarts = 0

    def teardown(self) -> None:
        self.fleet.store.engine.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # what the reconciler does between steps ----------------------------------------------------------

    def passes(self, n: int = PASSES, step_s: float = 1.0) -> None:
        async def go() -> None:
            for _ in range(n):
                self.fleet.clock.advance(step_s)
                await self.fleet.rec.pass_once()
                await self.fleet.rec.settle()

        asyncio.run(go())

    # the rules -----------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.expected) < 4)
    @rule(target=endpoints, owner=st.sampled_from([ALICE, BOB]), gpus=st.sampled_from([1, 2, 4]),
          lo=st.integers(0, 2), extra=st.integers(0, 2), start=st.booleans())
    def create(self, owner: Principal, gpus: int, lo: int, extra: int, start: bool) -> MultipleResults[str]:
        req = CreateEndpoint.model_validate({
            "model": "dedicate/tiny-chat", "hardware": f"{gpus}x_nvidia_h100_80gb_sxm",
            "state": "STARTED" if start else "STOPPED",
            "autoscaling": {"min_replicas": lo, "max_replicas": max(1, lo + extra)}})
        before = len(self.fleet.store.list_endpoints())
        try:
            view = self.fleet.svc.create(owner, req, dry_run=False)
        except DedicateError:  # refused (no node of that hardware now, say): nothing was made
            assert len(self.fleet.store.list_endpoints()) == before
            return multiple()
        eid = view.endpoint.id
        self.expected[eid] = Expected(lo, max(1, lo + extra), start)
        self.passes()
        return multiple(eid)

    @rule(eid=endpoints)
    def stop(self, eid: str) -> None:
        if eid in self.deleted:
            return
        self.fleet.svc.update(ADMIN, eid, EndpointPatch.model_validate({"state": "STOPPED"}))
        self.expected[eid].running = False
        self.passes()

    @rule(eid=endpoints)
    def start(self, eid: str) -> None:
        if eid in self.deleted:
            return
        self.fleet.svc.update(ADMIN, eid, EndpointPatch.model_validate({"state": "STARTED"}))
        self.expected[eid].running = True
        self.passes()

    @rule(eid=endpoints, replicas=st.integers(0, 4))
    def scale(self, eid: str, replicas: int) -> None:
        if eid in self.deleted:
            return
        self.fleet.svc.scale(ADMIN, eid, Scale(replicas=replicas))
        self.passes()

    @rule(eid=endpoints, lo=st.integers(0, 2), extra=st.integers(0, 2))
    def patch_bounds(self, eid: str, lo: int, extra: int) -> None:
        if eid in self.deleted:
            return
        hi = max(1, lo + extra)
        try:
            self.fleet.svc.update(ADMIN, eid, EndpointPatch.model_validate(
                {"autoscaling": {"min_replicas": lo, "max_replicas": hi}}))
        except DedicateError:  # refused (a quota, say): nothing changed, which the invariants check
            return
        self.expected[eid].min_replicas, self.expected[eid].max_replicas = lo, hi
        self.passes()

    @rule(eid=consumes(endpoints))
    def delete(self, eid: str) -> None:
        if eid in self.deleted:
            return
        self.fleet.svc.delete(ADMIN, eid)
        self.deleted.add(eid)
        self.expected.pop(eid)
        self.passes()

    @rule(data=st.data())
    def kill_a_replica(self, data: st.DataObject) -> None:
        live = [r for r in self.fleet.store.live_replicas() if r.facts.stop_requested_at is None]
        if not live:
            return
        victim = data.draw(st.sampled_from(sorted(r.id for r in live)))
        self.fleet.runtime.crash(victim)
        self.passes()

    @rule(outage_s=st.sampled_from([0, 5, 40]))
    def restart_the_control_plane(self, outage_s: int) -> None:
        self.fleet.clock.advance(outage_s)  # the replicas run on while no server watches them
        self.restarts += 1
        self.fleet.rec = self.fleet.reconciler()
        self.fleet.rec.holder = f"restarted:{self.restarts}"
        self.passes(PASSES + 12)  # the old holder's lease runs out first

    @rule(seconds=st.sampled_from([1, 30, 600]))
    def advance_the_clock(self, seconds: int) -> None:
        self.passes(3, step_s=seconds / 3)

    @precondition(lambda self: len(self.fleet.runtime.node_list) < 4)
    @rule()
    def a_node_appears(self) -> None:
        self.fleet.runtime.node_list.append(node(self.next_node))
        self.next_node += 1
        self.passes()

    @precondition(lambda self: len(self.fleet.runtime.node_list) > 1)
    @rule(data=st.data())
    def a_node_vanishes(self, data: st.DataObject) -> None:
        gone = data.draw(st.sampled_from([n.name for n in self.fleet.runtime.node_list]))
        self.fleet.runtime.node_list[:] = [n for n in self.fleet.runtime.node_list if n.name != gone]
        for p in self.fleet.runtime.processes.values():  # its replicas die with it
            if p.running and p.spec.node == gone:
                p.running, p.exit_code = False, 137
        self.passes()

    # what always holds -----------------------------------------------------------------------------------

    @invariant()
    def no_endpoint_is_lost_and_bounds_are_as_last_set(self) -> None:
        for eid, want in self.expected.items():
            ep = self.fleet.store.get_endpoint(eid)
            assert ep is not None and ep.deleted_at is None, f"{eid} was lost"
            assert (ep.min_replicas, ep.max_replicas) == (want.min_replicas, want.max_replicas), eid
            assert ep.intent is (Intent.RUN if want.running else Intent.STOP), eid
        for eid in self.deleted:
            ep = self.fleet.store.get_endpoint(eid)
            assert ep is None or ep.deleted_at is not None, f"{eid} came back"

    @invariant()
    def replicas_within_bounds_and_none_when_stopped(self) -> None:
        live = self.fleet.store.live_replicas()
        per: dict[str, int] = {}
        for r in live:
            per[r.endpoint_id] = per.get(r.endpoint_id, 0) + 1
        for eid in self.deleted:
            assert per.get(eid, 0) == 0, f"deleted {eid} still has {per[eid]} live replicas"
        for eid, want in self.expected.items():
            ep = self.fleet.store.get_endpoint(eid)
            assert ep is not None
            n = per.get(eid, 0)
            if not want.running:
                assert n == 0 and ep.state is EndpointState.STOPPED, (eid, n, ep.state, ep.status_message)
                continue
            assert n <= ep.max_replicas, (eid, n, ep.max_replicas)
            if n < ep.within_bounds(ep.desired_replicas):
                assert ep.queued_replicas > 0 or ep.state in (EndpointState.PENDING, EndpointState.ERROR) \
                    or n + ep.queued_replicas >= ep.min_replicas, \
                    (eid, n, ep.desired_replicas, ep.queued_replicas, ep.state, ep.status_message)

    @invariant()
    def no_node_holds_more_than_its_slots(self) -> None:
        used: dict[str, set[int]] = {}
        for r in self.fleet.store.live_replicas():
            taken = used.setdefault(r.node, set())
            assert not (taken & set(r.slots)), f"slot given twice on {r.node}: {r.slots}"
            taken |= set(r.slots)
        for name, slots in used.items():
            assert all(0 <= s < GPUS_PER_NODE for s in slots), (name, slots)

    @invariant()
    def the_queue_is_first_come_first_served(self) -> None:
        waiting = [e for e in self.fleet.store.list_endpoints() if e.queue_position is not None]
        by_hw: dict[str, list[int]] = {}
        for e in waiting:
            by_hw.setdefault(e.hardware, []).append(e.queue_position or 0)
        for hw, positions in by_hw.items():
            assert len(positions) == len(set(positions)), (hw, positions)
        ordered = sorted(waiting, key=lambda e: e.queue_position or 0)
        arrivals = [e.min_queued_at for e in ordered]
        assert all(a is not None for a in arrivals)
        assert arrivals == sorted(arrivals), "the queue is in the order endpoints started waiting"  # type: ignore[type-var]

    @invariant()
    def billing_charges_only_ready_time_and_the_invoice_adds_up(self) -> None:
        store = self.fleet.store
        intervals = store.intervals()
        replicas = {r.id: r for eid in [*self.expected, *self.deleted] for r in store.replicas_of(eid)}
        by_replica: dict[str, list] = {}
        for iv in intervals:
            by_replica.setdefault(iv.replica_id, []).append(iv)
        for rid, ivs in by_replica.items():
            r = replicas[rid]
            assert r.facts.first_ready_at is not None and all(iv.started_at >= r.facts.first_ready_at for iv in ivs), \
                f"{rid} charged before it was first ready"
            if r.facts.stopped_at is not None:
                assert all(iv.last_seen_at <= r.facts.stopped_at for iv in ivs), f"{rid} charged after it stopped"
            ivs.sort(key=lambda iv: iv.started_at)
            for a, b in itertools.pairwise(ivs):
                assert a.last_seen_at <= b.started_at, f"{rid}: overlapping intervals"
        with store.engine.connect() as conn:
            open_ = [rid for (rid,) in conn.execute(text("SELECT replica_id FROM billing_intervals WHERE closed = 0"))]
        for rid in open_:
            r = replicas[rid]
            assert r.facts.stopped_at is None and r.status is ReplicaStatus.READY, \
                f"open interval of {rid}, which is {r.status.value}"
        month = month_of(self.fleet.clock.now())
        for who in (ALICE, BOB):
            invoice = json.loads(self.fleet.svc.billing.invoice(who, month))
            mine = [iv for iv in intervals if iv.owner == who.owner]
            lo, hi = month_bounds(month)
            exact = sum((line.exact_cents for line in usage(mine, lo, hi)), Fraction(0))
            lines = sum((Decimal(line["cents"]) for line in invoice["lines"]), Decimal(0))
            assert Decimal(invoice["total_cents"]) == lines, "the total is the sum of the lines"
            assert abs(Decimal(invoice["total_cents"]) - round_cents(exact)) <= len(invoice["lines"]), \
                "each line is its intervals' exact charge, rounded once"


TestControlPlane = ControlPlane.TestCase
TestControlPlane.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
