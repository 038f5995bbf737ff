"""The store on SQLite and on a real PostgreSQL server: same answers from both."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.errors import Conflict
from dedicate.domain.records import Address, Endpoint, EndpointSignals, Replica
from dedicate.domain.replicas import ReplicaFacts, ReplicaStatus
from dedicate.metering.ledger import Billed, billed
from dedicate.store.db import make_engine, migrate
from dedicate.store.repos import Store
from dedicate.store.tables import IntervalRow

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Store:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # idempotent
    return Store(engine)


def endpoint(id_: str = "endpoint-1", name: str = "alice/tiny-00000001", owner: str = "alice") -> Endpoint:
    return Endpoint(
        id=id_, name=name, owner=owner, model="dedicate/tiny-chat", hardware="1x_cpu",
        display_name=name, min_replicas=1, max_replicas=2, desired_replicas=1, inactive_timeout=None,
        disable_prompt_cache=False, disable_speculative_decoding=False, availability_zone=None,
        cents_per_minute=Decimal("0.123456"), intent=Intent.RUN, state=EndpointState.PENDING,
        state_changed_at=T0, status_message="", failures_before_ready=0, created_at=T0, updated_at=T0,
        deleted_at=None, version=1,
    )


def replica(rid: str, endpoint_id: str = "endpoint-1") -> Replica:
    return Replica(
        id=rid, endpoint_id=endpoint_id, engine="transformers", node="local", slots=(0,), token="t",
        address=None, pid=None, process_started=None, log_path=None, created_at=T0,
        facts=ReplicaFacts(T0, None, None, None, 0, None, None, None), stop_reason=None, version=1,
    )


def test_an_endpoint_reads_back_exactly_as_written(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "made"))
    got = store.get_endpoint("endpoint-1")
    assert got == endpoint()
    assert got is not None and got.created_at.tzinfo is not None
    assert store.get_endpoint("alice/tiny-00000001") == got, "found by name too"


def test_a_duplicate_name_is_a_conflict(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "made"))
    with pytest.raises(Conflict):
        store.insert_endpoint(endpoint(id_="endpoint-2"), ("created", "made"))


def test_a_stale_guarded_write_changes_nothing(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "made"))
    read = store.get_endpoint("endpoint-1")
    assert read is not None
    assert store.update_endpoint(read, T0, None, desired_replicas=2)
    assert not store.update_endpoint(read, T0, None, desired_replicas=5), "version moved on"
    now = store.get_endpoint("endpoint-1")
    assert now is not None and now.desired_replicas == 2 and now.version == 2


def test_racing_writers_on_one_endpoint_exactly_one_wins(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "made"))
    read = store.get_endpoint("endpoint-1")
    assert read is not None

    def write(n: int) -> bool:
        return store.update_endpoint(read, T0, ("updated", f"writer {n}"), desired_replicas=n)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(write, range(1, 9)))
    assert results.count(True) == 1
    now = store.get_endpoint("endpoint-1")
    assert now is not None and now.desired_replicas == results.index(True) + 1
    assert [e.kind for e in store.events("endpoint-1")] == ["created", "updated"]


def test_deleted_endpoints_are_hidden_but_kept(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "made"))
    read = store.get_endpoint("endpoint-1")
    assert read is not None
    store.change_state(read, T0, EndpointState.STOPPING, None, deleted_at=T0 + timedelta(seconds=1),
                       intent=Intent.STOP)
    assert store.get_endpoint("endpoint-1") is None
    assert store.list_endpoints("alice") == []
    assert store.get_endpoint("endpoint-1", include_deleted=True) is not None


def test_endpoints_are_listed_per_owner(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "a"))
    store.insert_endpoint(endpoint("endpoint-2", "bob/tiny-00000002", "bob"), ("created", "b"))
    assert [e.id for e in store.list_endpoints("alice")] == ["endpoint-1"]
    assert [e.id for e in store.list_endpoints("bob")] == ["endpoint-2"]
    assert len(store.list_endpoints(None)) == 2


def test_replica_facts_round_trip_and_status_is_derived(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "made"))
    store.insert_replica(replica("r-1"))
    r = store.get_replica("r-1")
    assert r is not None and r.status is ReplicaStatus.PLACED
    ready_at = T0 + timedelta(seconds=12, microseconds=7)
    assert store.update_replica(r, T0, ("ready", "ok"), launched_at=T0, first_ready_at=ready_at,
                                last_probe_ok_at=ready_at, pid=42, address=Address("10.0.0.5", 1234))
    r2 = store.get_replica("r-1")
    assert r2 is not None and r2.status is ReplicaStatus.READY
    assert r2.address == Address("10.0.0.5", 1234) and r2.url == "http://10.0.0.5:1234", "the runtime's address"
    assert r2.slots == (0,)
    assert r2.facts.first_ready_at == ready_at
    assert [x.id for x in store.live_replicas("endpoint-1")] == ["r-1"]
    assert store.update_replica(r2, T0, None, stop_requested_at=ready_at, stopped_at=ready_at)
    assert store.live_replicas() == []


def test_keys_are_stored_hashed_and_revocation_is_immediate(store: Store) -> None:
    key, secret = store.create_key("alice", is_admin=False, name="ci", now=T0)
    assert secret.startswith("ddc_") and key.prefix == secret[:12]
    found = store.find_key(secret)
    assert found is not None and found.owner == "alice"
    with store.tx() as s:
        from sqlalchemy import text

        stored = s.execute(text("select secret_hash from api_keys")).scalar_one()
    assert secret not in stored
    store.revoke_key(key.id, T0)
    revoked = store.find_key(secret)
    assert revoked is not None and revoked.revoked_at == T0
    assert store.find_key("ddc_wrong") is None


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        store.insert_endpoint(endpoint().__class__(**{**endpoint().__dict__,
                                                      "created_at": datetime(2026, 1, 1)}),
                              ("created", "x"))


def test_gateway_signals_are_summed_over_fresh_gateways_with_their_busiest_moments(store: Store) -> None:
    ep = endpoint()
    store.insert_endpoint(ep, ("created", "test"))
    now = ep.created_at + timedelta(minutes=1)

    def row(in_flight: int, queued: int, peak: int) -> EndpointSignals:
        return EndpointSignals(ep.id, in_flight, queued, 10, 1, 100, 50, None, now, peak_load=peak)

    store.write_signals("gw-1", now, [row(2, 1, 9)])
    store.write_signals("gw-2", now, [row(4, 0, 0)])  # a peak lower than now counts as now
    store.write_signals("gw-old", now - timedelta(minutes=5), [row(50, 50, 100)])
    seen = store.signals(now, fresh_s=15)[ep.id]
    assert (seen.in_flight, seen.queued, seen.requests_total, seen.errors_total) == (6, 1, 20, 2)
    assert seen.peak_load == 9 + 4 and seen.load == 13


def test_signal_rows_nobody_writes_are_deleted_after_an_hour_without_changing_the_sums(store: Store) -> None:
    from sqlalchemy import select

    from dedicate.store.tables import SignalRow

    ep, other = endpoint(), endpoint("endpoint-2", "alice/tiny-00000002")
    store.insert_endpoint(ep, ("created", "test"))
    store.insert_endpoint(other, ("created", "test"))
    t = ep.created_at + timedelta(minutes=1)

    def row(endpoint_id: str, in_flight: int, at: datetime) -> EndpointSignals:
        return EndpointSignals(endpoint_id, in_flight, 0, 10, 1, 100, 50, None, at)

    def rows() -> set[tuple[str, str]]:
        with store.tx() as s:
            return {(r.gateway, r.endpoint_id) for r in s.scalars(select(SignalRow))}

    store.write_signals("gw-dead", t, [row(ep.id, 50, t), row(other.id, 50, t)])  # then the process died
    store.write_signals("gw-1", t, [row(ep.id, 1, t), row(other.id, 1, t)])  # then it forgot ``other``
    hour = t + timedelta(hours=1)
    store.write_signals("gw-2", hour - timedelta(minutes=30), [row(ep.id, 7, hour)])
    store.write_signals("gw-1", hour, [row(ep.id, 2, hour)])  # exactly an hour: kept
    assert rows() == {("gw-dead", ep.id), ("gw-dead", other.id), ("gw-1", ep.id), ("gw-1", other.id),
                      ("gw-2", ep.id)}
    later = hour + timedelta(seconds=1)
    store.write_signals("gw-1", later, [row(ep.id, 2, hour)], keep_s=7200)  # a longer horizon: nothing goes
    assert len(rows()) == 5
    before = store.signals(later, fresh_s=15)
    store.write_signals("gw-1", later, [row(ep.id, 2, hour)])
    assert rows() == {("gw-1", ep.id), ("gw-2", ep.id)}, "the dead process's rows and the forgotten one are gone"
    assert store.signals(later, fresh_s=15) == before
    assert before[ep.id].in_flight == 2 and other.id not in before
    assert store.signals(later, fresh_s=3600)[ep.id].in_flight == 2 + 7, "rows within the hour still count"


ROUTE_COLUMNS = {"route_id", "deployment_name", "scaling_rules", "max_concurrency"}  # added by 0008 to 0012


def insert_old_endpoint(engine: Engine, ep: Endpoint) -> None:
    """An endpoint row as releases before 0008 wrote it: every column but the route's."""
    from dedicate.store.tables import EndpointRow, OwnerRow
    values = {c.name: getattr(ep, c.name) for c in EndpointRow.__table__.columns if c.name not in ROUTE_COLUMNS}
    values.update(intent=ep.intent.value, state=ep.state.value, version=1)
    with engine.begin() as conn:
        if conn.execute(select(OwnerRow.name).where(OwnerRow.name == ep.owner)).first() is None:
            conn.execute(insert(OwnerRow.__table__).values(name=ep.owner, created_at=ep.created_at))
        conn.execute(insert(EndpointRow.__table__).values(**values))


def test_replicas_recorded_before_the_runtime_reported_hosts_are_reached_on_loopback(db_url: str) -> None:
    from sqlalchemy import text

    engine = make_engine(db_url)
    migrate(engine, "0005")
    s = Store(engine)
    insert_old_endpoint(engine, endpoint())  # the endpoints table of 0005: no route yet
    # A release-0005 database: its replica rows have a port and no host column.
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO replicas (id, endpoint_id, engine, node, slots, token, port, created_at, probe_failures, "
            "version) VALUES ('r-old', 'endpoint-1', 'synthetic', 'local', '0,1', 't', 4321, :t, 0, 1)"), {"t": T0})
    migrate(engine)
    r = s.get_replica("r-old")
    assert r is not None and r.address == Address("127.0.0.1", 4321) and r.slots == (0, 1)
    engine.dispose()


def test_a_state_changes_only_through_the_state_machine_with_its_event_in_the_same_write(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "made"))
    ep = store.get_endpoint("endpoint-1")
    assert ep is not None and ep.state is EndpointState.PENDING
    with pytest.raises(ValueError, match="change_state"):
        store.update_endpoint(ep, T0, None, state=EndpointState.STARTED)
    assert store.change_state(ep, T0 + timedelta(seconds=5), EndpointState.STOPPING, ("stop", "asked"),
                              intent=Intent.STOP)
    stopping = store.get_endpoint("endpoint-1")
    assert stopping is not None and (stopping.state, stopping.intent) == (EndpointState.STOPPING, Intent.STOP)
    assert stopping.state_changed_at == T0 + timedelta(seconds=5)
    assert [e.kind for e in store.events("endpoint-1")][-1] == "stop"
    assert store.change_state(stopping, T0, EndpointState.STOPPED, None)
    stopped = store.get_endpoint("endpoint-1")
    assert stopped is not None
    with pytest.raises(Conflict):  # STOPPED may go only to PENDING or STARTING
        store.change_state(stopped, T0, EndpointState.ERROR, ("bad", "never written"))
    assert store.get_endpoint("endpoint-1") == stopped, "a refused transition writes nothing"
    assert "bad" not in [e.kind for e in store.events("endpoint-1")]
    assert not store.change_state(stopping, T0, EndpointState.PENDING, None), "a stale version writes nothing"


def test_a_pass_reads_the_endpoints_not_stopped_deleted_ones_included(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "a"))
    store.insert_endpoint(endpoint("endpoint-2", "bob/tiny-00000002", "bob"), ("created", "b"))
    two = store.get_endpoint("endpoint-2")
    assert two is not None
    assert store.change_state(two, T0, EndpointState.STOPPING, None, intent=Intent.STOP, deleted_at=T0)
    assert [e.id for e in store.active_endpoints()] == ["endpoint-1", "endpoint-2"], "deleted and stopping: read"
    stopping = store.get_endpoint("endpoint-2", include_deleted=True)
    assert stopping is not None and store.change_state(stopping, T0, EndpointState.STOPPED, None)
    assert [e.id for e in store.active_endpoints()] == ["endpoint-1"], "stopped: never read again"
    assert [e.id for e in store.endpoints_by_id(["endpoint-2"])] == ["endpoint-2"]


def test_steady_good_probes_move_facts_and_intervals_together_in_one_write(store: Store) -> None:
    store.insert_endpoint(endpoint(), ("created", "made"))
    for rid in ("r-1", "r-2", "r-3"):
        store.insert_replica(replica(rid))
        r = store.get_replica(rid)
        assert r is not None
        assert store.record_probe_ok(r, T0, None, {"first_ready_at": T0, "last_probe_ok_at": T0, "launched_at": T0},
                                     owner="alice", hardware="1x_cpu", cents_per_minute=Decimal(1), max_gap_s=30)
    ready = {r.id: r for r in store.live_replicas()}
    gap = store.get_replica("r-3")
    assert gap is not None
    store.close_intervals("r-3", "probe failed")  # its interval ended: the bulk path leaves it alone
    later = T0 + timedelta(seconds=5)
    done = store.record_probes_ok(list(ready.values()), later, max_gap_s=30)
    assert done == {"r-1", "r-2"}
    for rid in ("r-1", "r-2"):
        r = store.get_replica(rid)
        assert r is not None and r.facts.last_probe_ok_at == later and r.version == ready[rid].version
    spans = {i.replica_id: i for i in store.intervals() if i.replica_id != "r-3"}
    assert all(i.last_seen_at == later for i in spans.values())
    assert store.record_probes_ok(list(ready.values()), T0 + timedelta(seconds=60), max_gap_s=30) == set(), \
        "a silence longer than the gap is not billed in bulk"


def test_a_page_of_endpoints_intervals_is_read_at_once_as_each_ones_own(store: Store) -> None:
    for eid, name in (("endpoint-1", "alice/tiny-00000001"), ("endpoint-2", "alice/tiny-00000002"),
                      ("endpoint-3", "alice/tiny-00000003")):
        store.insert_endpoint(endpoint(eid, name), ("created", "made"))
        for n in (1, 2):
            store.insert_replica(replica(f"{eid}-r{n}", eid))
            r = store.get_replica(f"{eid}-r{n}")
            assert r is not None and store.record_probe_ok(
                r, T0, None, {"first_ready_at": T0, "last_probe_ok_at": T0, "launched_at": T0}, owner="alice",
                hardware="1x_cpu", cents_per_minute=Decimal(1), max_gap_s=30)
    lo, hi = T0 - timedelta(hours=1), T0 + timedelta(hours=1)
    got = store.intervals_of(["endpoint-1", "endpoint-3"], lo, hi)
    each = [i for eid in ("endpoint-1", "endpoint-3") for i in store.intervals(endpoint_id=eid, start=lo, end=hi)]
    assert sorted(got, key=lambda i: i.replica_id) == sorted(each, key=lambda i: i.replica_id) and len(got) == 4
    assert store.intervals_of([], lo, hi) == []


def test_the_billed_time_summed_in_the_database_is_what_the_intervals_add_up_to(store: Store) -> None:
    """Every edge: spans cut by the period at both ends, outside it, zero-length, microseconds, two
    prices on one endpoint, two hardware shapes, two owners; on SQLite and PostgreSQL alike."""
    spans = [  # (endpoint, owner, hardware, price, start offset µs, length µs)
        ("endpoint-1", "alice", "1x_cpu", Decimal("0.123456"), -7_200_000_001, 3_600_000_007),  # ends before
        ("endpoint-1", "alice", "1x_cpu", Decimal("0.123456"), -1_000_003, 90_000_011),  # starts before the period
        ("endpoint-1", "alice", "1x_cpu", Decimal("5.6"), 13, 59_999_999),  # another price, same shape
        ("endpoint-1", "alice", "2x_cpu", Decimal("5.6"), 999_999, 1),
        ("endpoint-2", "alice", "1x_cpu", Decimal("0.123456"), 3_599_000_000, 7_200_000_000),  # runs past the end
        ("endpoint-2", "alice", "1x_cpu", Decimal("0.123456"), 42, 0),  # seen ready once: no time
        ("endpoint-2", "alice", "4x_cpu", Decimal("0.123456"), 42, 0),  # ... the only one of its shape: no line
        ("endpoint-3", "bob", "1x_cpu", Decimal("999"), 1, 86_400_000_000),  # the whole day
    ]
    for eid, owner in (("endpoint-1", "alice"), ("endpoint-2", "alice"), ("endpoint-3", "bob")):
        store.insert_endpoint(endpoint(eid, f"{owner}/tiny-{eid[-1] * 8}", owner), ("created", "made"))
    for n, (eid, *_) in enumerate(spans):
        store.insert_replica(replica(f"r-{n}", eid))
    with store.engine.begin() as conn:
        for n, (eid, owner, hw, price, at, length) in enumerate(spans):
            conn.execute(insert(IntervalRow).values(
                replica_id=f"r-{n}", endpoint_id=eid, owner=owner, hardware=hw, cents_per_minute=price,
                started_at=T0 + timedelta(microseconds=at), last_seen_at=T0 + timedelta(microseconds=at + length),
                closed=True))
    lo, hi = T0, T0 + timedelta(hours=1)

    def key(b: Billed) -> tuple[str, str, Decimal]:
        return b.endpoint_id, b.hardware, b.cents_per_minute

    def from_intervals(**where: str) -> list[Billed]:
        return sorted((b for b in billed(store.intervals(start=lo, end=hi, **where), lo, hi)), key=key)

    everything = sorted(store.billed(lo, hi), key=key)
    assert everything == from_intervals() and len(everything) == 5
    assert sorted(store.billed(lo, hi, owner="alice"), key=key) == from_intervals(owner="alice")
    assert sorted(store.billed(lo, hi, endpoint_ids=["endpoint-2", "endpoint-3"]), key=key) == \
        sorted(from_intervals(endpoint_id="endpoint-2") + from_intervals(endpoint_id="endpoint-3"), key=key)
    assert store.billed(lo, hi, endpoint_ids=[]) == []
    first = next(b for b in everything if b.endpoint_id == "endpoint-1" and b.hardware == "1x_cpu"
                 and b.cents_per_minute == Decimal("0.123456"))
    assert first.microseconds == 90_000_011 - 1_000_003, "cut at the period's start, to the microsecond"
