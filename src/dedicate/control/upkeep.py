"""Replica upkeep: observe each live replica, probe it, record what happened, stop what must stop.

Per live replica, each pass: not launched yet → adopt the process a crash left
unrecorded, or launch it; launched → poll its process (all polls in one
thread hop), record an exit, stop it in the background if asked, else probe
its address. Good probes of replicas that are already ready are recorded in
one transaction for the whole pass (facts and billing intervals together);
every other outcome is its own guarded write. Stops, orphan stops included,
run concurrently in the background and never hold up a pass.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from dedicate.clock import Clock
from dedicate.control import failpoints
from dedicate.control.failures import Failures
from dedicate.control.launching import Launcher
from dedicate.domain.records import Address, Endpoint, Replica
from dedicate.runtimes.base import Handle, ProcessState, Runtime
from dedicate.runtimes.logtail import log_tail
from dedicate.settings import Settings
from dedicate.store.base import StaleLease
from dedicate.store.ledger import GoodProbe
from dedicate.store.repos import EndpointWrite, ReplicaWrite, Store

log = logging.getLogger("dedicate.reconciler")

_RUNNING = ProcessState(True)
STOP_GRACE_S = 10.0
START_TIMEOUT_S = 600.0
UNPLACED_HOLD_S = 5.0  # after the runtime gave up placing a replica, before the next try
Probe = Callable[[Address], Awaitable[bool]]


@dataclass(frozen=True)
class _Steady:
    """A good probe of a replica that was ready already: recorded with the others in one write."""

    replica: Replica
    endpoint: Endpoint | None


@dataclass(frozen=True)
class _Good:
    """Any other good probe (a first one, or one after failures): recorded with its facts, a pass at a time."""

    replica: Replica
    endpoint: Endpoint | None


class ReplicaUpkeep:
    def __init__(self, runtime: Runtime, settings: Settings, clock: Clock, failures: Failures,
                 launcher: Launcher, probe: Probe, wake: Callable[[], None]) -> None:
        self.runtime = runtime
        self.settings = settings
        self.clock = clock
        self.failures = failures
        self.launcher = launcher
        self.probe = probe
        self.wake = wake
        # A longer silence than this between good probes is an outage: it is not billed.
        self.max_gap_s = max(30.0, 10 * settings.reconcile_interval_s, 3 * settings.probe_interval_s)
        self.stopping: set[str] = set()
        self._next_probe: dict[str, float] = {}  # when each replica's next probe is due (epoch s), in this process
        self._tasks: set[asyncio.Task[None]] = set()

    # the pass ---------------------------------------------------------------------------------

    async def observe(self, store: Store, live: Sequence[Replica], processes: Mapping[str, Handle],
                      endpoints: Mapping[str, Endpoint]) -> list[Replica] | None:
        """Bring every live replica's recorded facts up to date with what runs.

        Returns the live replicas as they now are where only steady good probes were recorded
        (the common case, which needs no re-read), or None where anything else may have been
        written and the caller must read again.
        """
        now = self.clock.now()
        launched = [r for r in live if r.facts.launched_at is not None and r.id not in self.stopping]
        states = await self._poll_all(launched, processes)
        # A ready, passing replica costs a pass nothing until its next probe is due; only the
        # others (starting, failing, exited, stopping, not launched) take a step of their own.
        steady: list[Replica] = []
        exited: list[Replica] = []
        others: list[Replica] = []
        for r in live:
            if r.id in self.stopping:
                continue
            state = states.get(r.id)
            if self._passing(r, state):
                if self._due(r, now):
                    steady.append(r)
            elif r.facts.launched_at is not None and (state is None or not state.running):
                exited.append(r)
            else:
                others.append(r)
        self._forget_gone(live)
        if exited:
            await self._record_exits(store, exited, states, endpoints)
        others = await self._address(store, others, states)
        probed = await asyncio.gather(*(self._probe_steady(r) for r in steady))
        results = await asyncio.gather(
            *(self._observe(store, r, processes, endpoints.get(r.endpoint_id)) for r in others),
            *(self._probed(store, r, False, endpoints.get(r.endpoint_id), now)
              for r, ok in zip(steady, probed, strict=True) if not ok),
            return_exceptions=True)
        good = [_Steady(r, endpoints.get(r.endpoint_id)) for r, ok in zip(steady, probed, strict=True) if ok]
        moved: list[_Good] = []
        for res in results:  # one bad replica never stops the pass
            if isinstance(res, StaleLease):
                raise res
            if isinstance(res, BaseException):
                log.error("observing a replica failed: %r", res)
            elif isinstance(res, _Steady):
                good.append(res)
            elif isinstance(res, _Good):
                moved.append(res)
        await self._record_good(store, moved)
        done = await self._record_steady(store, good) if good else set()
        if exited or others or moved or len(probed) > len(good) or len(done) < len(good):
            return None
        return list(live)  # only their last good probe moved (no version changes with it)

    async def _address(self, store: Store, replicas: list[Replica], states: Mapping[str, ProcessState]
                       ) -> list[Replica]:
        """Record where the running replicas without an address answer, all in one write.

        Returns ``replicas`` with those recorded as they now are (their probe comes next).
        """
        unaddressed = [r for r in replicas if r.address is None and r.facts.launched_at is not None
                       and r.facts.stop_requested_at is None and (st := states.get(r.id)) is not None and st.running]
        if not unaddressed:
            return replicas
        found = await asyncio.to_thread(lambda: {r.id: self.runtime.address_of(r.id) for r in unaddressed})
        writes = [ReplicaWrite(r, None, {"address": a}) for r in unaddressed if (a := found.get(r.id)) is not None]
        done = await asyncio.to_thread(store.update_replicas, writes, self.clock.now()) if writes else set()
        # A guarded write that applied leaves the row exactly as read, plus its changes.
        fresh = {w.replica.id: replace(w.replica, address=found[w.replica.id], version=w.replica.version + 1)
                 for w in writes if w.replica.id in done}
        moved = {w.replica.id for w in writes} - set(fresh)  # its row moved on: the next pass reads it again
        return [fresh.get(r.id, r) for r in replicas if r.id not in moved]

    async def _poll_all(self, replicas: Sequence[Replica], processes: Mapping[str, Handle]
                        ) -> dict[str, ProcessState]:
        """Each launched replica's process state. One that the runtime's listing of this pass found
        running as it was launched (same pid, same start time) is running; only the others are asked
        one at a time, off the loop: at 10,000 replicas that is a handful, not 10,000 polls."""
        states: dict[str, ProcessState] = {}
        ask: list[Replica] = []
        for r in replicas:
            h = processes.get(r.id)
            if h is not None and h.pid == r.pid and h.started == r.process_started:
                states[r.id] = _RUNNING
            else:
                ask.append(r)
        if ask:
            states.update(await asyncio.to_thread(
                lambda: {r.id: self.runtime.poll(Handle(r.pid or -1, r.process_started or "")) for r in ask}))
        return states

    @staticmethod
    def _passing(r: Replica, state: ProcessState | None) -> bool:
        """Ready, running, reachable, not asked to stop and not failing its probes."""
        f = r.facts
        return state is not None and state.running and r.address is not None and f.stop_requested_at is None \
            and f.first_ready_at is not None and f.probe_failures == 0

    def _due(self, r: Replica, now: datetime) -> bool:
        """A passing replica's probe is due once a ``probe_interval_s`` tick of its own has passed."""
        due = self._next_probe.get(r.id)
        return due is None or now.timestamp() >= due

    def _probed_now(self, replica_id: str, now: datetime) -> None:
        """Its next probe is due at its next tick. Each replica's ticks are offset by its id, so the
        probes of replicas that became ready together spread over the interval, not all on one pass."""
        interval = self.settings.probe_interval_s
        if interval <= 0:
            self._next_probe.pop(replica_id, None)
            return
        offset = zlib.crc32(replica_id.encode()) % 1000 / 1000 * interval
        self._next_probe[replica_id] = ((now.timestamp() - offset) // interval + 1) * interval + offset

    def _forget_gone(self, live: Sequence[Replica]) -> None:
        if len(self._next_probe) > len(live):
            ids = {r.id for r in live}
            self._next_probe = {rid: at for rid, at in self._next_probe.items() if rid in ids}

    async def _probe_steady(self, r: Replica) -> bool:
        assert r.address is not None
        self._probed_now(r.id, self.clock.now())
        try:
            return await self.probe(r.address)
        except Exception as exc:  # a probe that raises is a failed probe
            log.warning("probing replica %s failed: %r", r.id, exc)
            return False

    async def _observe(self, store: Store, r: Replica, processes: Mapping[str, Handle],
                       ep: Endpoint | None) -> _Steady | _Good | None:
        if r.facts.launched_at is None:
            now = self.clock.now()
            found = processes.get(r.id)
            if found is not None:  # launched before a crash, never recorded: adopt it
                await asyncio.to_thread(
                    store.update_replica, r, now, ("adopted", f"replica {r.id} adopted"),
                    pid=found.pid, process_started=found.started, launched_at=now)
            elif r.facts.stop_requested_at is not None:
                await asyncio.to_thread(store.update_replica, r, now, None, stopped_at=now)
            elif ep is not None:
                await self.launcher.launch(store, [(ep, r)])
            return None
        # launched and running: ``observe`` records the exits of the others itself
        if r.facts.stop_requested_at is not None:
            self.spawn(self.stop(store, r, Handle(r.pid or -1, r.process_started or "")))
            return None
        return await self._probe(store, r, ep)

    async def _record_exits(self, store: Store, exited: Sequence[Replica], states: Mapping[str, ProcessState],
                            endpoints: Mapping[str, Endpoint]) -> None:
        """Replicas whose process ended, recorded in one write; the unasked ones count as failures."""
        now = self.clock.now()
        unasked = [r for r in exited if r.facts.stop_requested_at is None]
        tails = await asyncio.to_thread(lambda: {r.id: log_tail(r.log_path) for r in unasked})
        writes: list[ReplicaWrite] = []
        unplaced: dict[str, str] = {}  # replica id → why the runtime could not place it
        for r in exited:
            state = states.get(r.id) or ProcessState(False)
            code = state.exit_code
            if r.facts.stop_requested_at is not None:
                event = ("stopped", f"replica {r.id} stopped")
                changes: dict[str, Any] = {"stopped_at": now, "exit_code": code}
            elif state.unplaced:  # it never ran: not a failure of the model, and it is queued again
                why = state.detail or "the runtime could not place it"
                unplaced[r.id] = why
                event = ("unplaced", f"replica {r.id} could not be placed: {why}")
                changes = {"stop_requested_at": now, "stop_reason": "not placed", "stopped_at": now}
            else:
                why = state.detail or tails.get(r.id, "")
                ended = f"exited with code {code}" if code is not None or not state.detail else "ended"
                event = ("failed", f"replica {r.id} {ended}: {why}")
                changes = {"stopped_at": now, "exit_code": code}
            writes.append(ReplicaWrite(r, event, changes))
        done = await asyncio.to_thread(store.update_replicas, writes, now)
        failed = [(ep, w.replica, w.event[1]) for w in writes
                  if w.replica.id in done and w.replica.facts.stop_requested_at is None and w.event is not None
                  and w.replica.id not in unplaced and (ep := endpoints.get(w.replica.endpoint_id)) is not None]
        if failed:
            await self.failures.count_all(store, failed, now)
        for r in exited:
            if r.id in unplaced and r.id in done:
                self.failures.hold(r.endpoint_id, now, UNPLACED_HOLD_S, unplaced[r.id])

    async def _probe(self, store: Store, r: Replica, ep: Endpoint | None) -> _Steady | _Good | None:
        now = self.clock.now()
        address = r.address
        if address is None:
            address = await asyncio.to_thread(self.runtime.address_of, r.id)
            if address is None:
                await self._check_start_timeout(store, r, now)
                return None
            if not await asyncio.to_thread(store.update_replica, r, now, None, address=address):
                return None
            fresh = await asyncio.to_thread(store.get_replica, r.id)
            if fresh is None:
                return None
            r = fresh
        self._probed_now(r.id, now)
        return await self._probed(store, r, await self.probe(address), ep, now)

    async def _probed(self, store: Store, r: Replica, ok: bool, ep: Endpoint | None, now: datetime
                      ) -> _Steady | _Good | None:
        """Record one failed probe; a good one is returned, to be recorded with the others by the caller."""
        if ok:
            if r.facts.first_ready_at is not None and r.facts.probe_failures == 0:
                return _Steady(r, ep)
            return _Good(r, ep)
        if r.facts.first_ready_at is None:
            await self._check_start_timeout(store, r, now)
            return None
        failures = r.facts.probe_failures + 1
        # Seen not ready: its billing interval ends at its last good probe; the next good one opens anew.
        await asyncio.to_thread(store.close_intervals, r.id, "probe failed")
        if failures >= self.settings.probe_failure_threshold:
            await asyncio.to_thread(
                store.update_replica, r, now,
                ("unhealthy", f"replica {r.id} failed {failures} probes in a row; replacing it"),
                probe_failures=failures, stop_requested_at=now, stop_reason="unhealthy")
        else:
            await asyncio.to_thread(store.update_replica, r, now, None, probe_failures=failures)
        return None

    async def _record_steady(self, store: Store, steady: Sequence[_Steady]) -> set[str]:
        """Record the steady good probes in one write; the ids recorded so."""
        now = self.clock.now()
        done = await asyncio.to_thread(store.record_probes_ok, [s.replica for s in steady], now, self.max_gap_s)
        # a gap, a closed interval or a row that moved on: recorded with their facts
        await self._record_good(store, [_Good(s.replica, s.endpoint) for s in steady if s.replica.id not in done])
        return done

    async def _record_good(self, store: Store, good: Sequence[_Good]) -> None:
        """Good probes that move a replica's facts (first ready, failures cleared), in one write."""
        if not good:
            return
        now = self.clock.now()
        probes: list[GoodProbe] = []
        for g in good:
            r, ep = g.replica, g.endpoint
            first = r.facts.first_ready_at is None
            changes: dict[str, Any] = {"last_probe_ok_at": now, "probe_failures": 0}
            if first:
                changes["first_ready_at"] = now
            hw = self.settings.catalog.hardware.get(ep.hardware) if ep is not None else None
            price = hw.cents_per_minute if hw is not None else (ep.cents_per_minute if ep else Decimal(0))
            probes.append(GoodProbe(r, ("ready", f"replica {r.id} ready") if first else None, changes,
                                    owner=ep.owner if ep else "", hardware=ep.hardware if ep else "",
                                    cents_per_minute=price))
        done = await asyncio.to_thread(store.record_good_probes, probes, now, self.max_gap_s)
        firsts = [g for g in good if g.replica.id in done and g.replica.facts.first_ready_at is None]
        if not firsts:
            return
        failpoints.hit("after_first_probe")
        ready_endpoints = {g.endpoint.id for g in firsts if g.endpoint is not None}
        for endpoint_id in ready_endpoints:
            self.failures.clear(endpoint_id)
        counted = [ep for ep in await asyncio.to_thread(store.endpoints_by_id, ready_endpoints)
                   if ep.failures_before_ready]
        if counted:  # a replica became ready: the failures before it no longer count toward ERROR
            writes = [EndpointWrite(ep, None, None, {"failures_before_ready": 0}) for ep in counted]
            await asyncio.to_thread(store.settle_endpoints, writes, now)

    async def _check_start_timeout(self, store: Store, r: Replica, now: datetime) -> None:
        launched = r.facts.launched_at
        if launched is not None and (now - launched).total_seconds() > START_TIMEOUT_S:
            await asyncio.to_thread(
                store.update_replica, r, now,
                ("failed", f"replica {r.id} not ready after {START_TIMEOUT_S:.0f} s; replacing it"),
                stop_requested_at=now, stop_reason="start timeout")

    # stops ------------------------------------------------------------------------------------

    def stop_orphans(self, processes: Mapping[str, Handle], live_ids: set[str]) -> None:
        """Stop, in the background and all at once, processes whose replica has no live row."""
        for replica_id, handle in processes.items():
            if replica_id not in live_ids and replica_id not in self.stopping:
                log.warning("stopping orphan replica process %s (pid %s)", replica_id, handle.pid)
                self.spawn(self._stop_orphan(replica_id, handle))

    async def _stop_orphan(self, replica_id: str, handle: Handle) -> None:
        self.stopping.add(replica_id)
        try:
            await asyncio.to_thread(self.runtime.stop, handle, STOP_GRACE_S)
        finally:
            self.stopping.discard(replica_id)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("a background stop failed: %r", exc)  # the next pass looks again

    async def settle(self) -> None:
        """Wait for the stops started in the background (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self, store: Store, r: Replica, handle: Handle) -> None:
        if r.id in self.stopping:
            return
        self.stopping.add(r.id)
        try:
            code = await asyncio.to_thread(self.runtime.stop, handle, STOP_GRACE_S)
            if code is None and (await asyncio.to_thread(self.runtime.poll, handle)).running:
                # It outlived SIGKILL (e.g. stuck in the kernel): it keeps its slots and stays
                # STOPPING, and the next pass tries again. Never record a stop that did not happen.
                log.error("replica %s (pid %s) did not stop; will retry", r.id, handle.pid)
                return
            fresh = await asyncio.to_thread(store.get_replica, r.id)
            if fresh is not None and fresh.facts.stopped_at is None:
                now = self.clock.now()
                ok = await asyncio.to_thread(
                    store.update_replica, fresh, now,
                    ("stopped", f"replica {r.id} stopped ({fresh.stop_reason or 'requested'})"),
                    stopped_at=now, exit_code=code)
                if ok and fresh.stop_reason == "start timeout":
                    ep = await asyncio.to_thread(store.get_endpoint, fresh.endpoint_id, include_deleted=True)
                    if ep is not None:
                        tail = await asyncio.to_thread(log_tail, fresh.log_path)
                        await self.failures.count(store, ep, fresh, now,
                                                  f"replica {r.id} never became ready: {tail}")
        finally:
            self.stopping.discard(r.id)
            self.wake()
