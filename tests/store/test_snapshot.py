"""The row cache behind a pass's reads: it builds only changed rows, and the database says what changed."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import String, select, type_coerce

from dedicate.domain.endpoints import EndpointState
from dedicate.domain.records import EndpointSignals
from dedicate.store.db import make_engine
from dedicate.store.repos import ReplicaWrite, Store
from dedicate.store.snapshot import RowCache
from dedicate.store.tables import IntervalRow
from tests.store.test_store import T0, endpoint, replica


def test_the_cache_fetches_only_rows_whose_key_moved_and_forgets_rows_that_left() -> None:
    cache: RowCache[str] = RowCache()
    fetched: list[list[str]] = []

    def fetch(ids: list[str]) -> list[tuple[str, str]]:
        fetched.append(sorted(ids))
        return [(i, f"{i}@{versions[i]}") for i in ids]

    versions = {"a": 1, "b": 1, "c": 1}
    assert cache.read([(i, v) for i, v in versions.items()], fetch, complete=True) == ["a@1", "b@1", "c@1"]
    versions["b"] = 2
    assert cache.read([(i, v) for i, v in versions.items()], fetch, complete=True) == ["a@1", "b@2", "c@1"]
    assert fetched == [["a", "b", "c"], ["b"]], "the second read built only the row that changed"
    del versions["a"]
    assert cache.read([(i, v) for i, v in versions.items()], fetch, complete=True) == ["b@2", "c@1"]
    assert len(fetched) == 2, "nothing was fetched for a row that left"


def test_a_row_gone_between_the_two_reads_is_left_out() -> None:
    cache: RowCache[str] = RowCache()
    assert cache.read([("a", 1), ("b", 1)], lambda ids: [("a", "a")], complete=True) == ["a"]


def test_a_write_by_another_store_on_the_same_database_is_seen_by_the_next_read(db_url: str) -> None:
    from dedicate.store.db import migrate

    engine = make_engine(db_url)
    migrate(engine)
    mine, theirs = Store(engine), Store(make_engine(db_url))  # two processes' stores
    mine.insert_endpoint(endpoint(), ("created", "test"))
    mine.insert_replica(replica("r1"))
    (ep,) = mine.active_endpoints()
    (r,) = mine.live_replicas()
    assert r.facts.stop_requested_at is None and ep.desired_replicas == 1
    assert theirs.update_replicas([ReplicaWrite(theirs.live_replicas()[0], None,
                                                {"stop_requested_at": T0, "stop_reason": "test"})], T0) == {"r1"}
    assert theirs.change_state(theirs.active_endpoints()[0], T0, EndpointState.STARTING, None, desired_replicas=2)
    (r2,) = mine.live_replicas()
    (ep2,) = mine.active_endpoints()
    assert r2.facts.stop_requested_at == T0 and r2.version == r.version + 1
    assert ep2.state is EndpointState.STARTING and ep2.desired_replicas == 2


def test_an_endpoints_last_request_moved_in_place_is_seen_by_the_next_read(db_url: str) -> None:
    from dedicate.store.db import migrate

    engine = make_engine(db_url)
    migrate(engine)
    store = Store(engine)
    store.insert_endpoint(endpoint(), ("created", "test"))
    (before,) = store.active_endpoints()
    assert before.last_request_at is None
    later = T0 + timedelta(minutes=5)
    store.write_signals("gw1", later, [EndpointSignals("endpoint-1", 0, 0, 1, 0, 0, 0, later, later)], [], 3600)
    (after,) = store.active_endpoints()
    assert after.version == before.version, "a signal does not bump the version..."
    assert after.last_request_at == later, "...and the cache still sees the idle clock move"


def test_the_plain_sql_writes_store_times_as_sqlalchemy_does_and_read_them_back(db_url: str) -> None:
    """Whole-second times (the manual clock's) are where a driver's own format would differ."""
    from decimal import Decimal

    from dedicate.store.db import migrate
    from dedicate.store.ledger import GoodProbe

    engine = make_engine(db_url)
    migrate(engine)
    store = Store(engine)
    store.insert_endpoint(endpoint(), ("created", "test"))
    store.insert_replica(replica("r1"))
    t0 = T0.replace(microsecond=0)
    (r,) = store.live_replicas()
    first = GoodProbe(r, ("ready", "r1 ready"), {"first_ready_at": t0, "last_probe_ok_at": t0, "launched_at": t0},
                      owner="alice", hardware="1x_cpu", cents_per_minute=Decimal("1.5"))
    assert store.record_good_probes([first], t0, 30) == {"r1"}
    (r,) = store.live_replicas("endpoint-1")
    t1 = t0 + timedelta(seconds=5)
    assert store.record_probes_ok([r], t1, 30) == {"r1"}, "the steady write finds the interval opened at t0"
    (r,) = store.live_replicas("endpoint-1")
    t2 = t1 + timedelta(seconds=5)
    again = GoodProbe(r, None, {"last_probe_ok_at": t2, "probe_failures": 0}, owner="alice", hardware="1x_cpu",
                      cents_per_minute=Decimal("1.5"))
    assert store.record_good_probes([again], t2, 30) == {"r1"}, "and the row-by-row write extends it"
    (interval,) = store.intervals(endpoint_id="endpoint-1")
    assert (interval.started_at, interval.last_seen_at) == (t0, t2)
    assert interval.cents_per_minute == Decimal("1.5")
    (r,) = store.live_replicas("endpoint-1")
    assert r.facts.first_ready_at == t0 and r.facts.last_probe_ok_at == t2
    if db_url.startswith("sqlite"):  # stored as SQLAlchemy stores them, so comparisons in SQL hold
        with store.tx() as s:
            (raw,) = s.execute(select(type_coerce(IntervalRow.last_seen_at, String))).one()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", raw), raw
