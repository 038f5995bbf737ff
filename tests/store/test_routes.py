"""Routes (v2's endpoints) in the store, on SQLite and PostgreSQL: the migration from the previous
release, live names, guarded writes, and the split that deployments change without the etag."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import text

from dedicate.domain.endpoints import EndpointState, Intent
from dedicate.domain.errors import Conflict
from dedicate.domain.routes import Route, SplitEntry, Visibility, route_id_for
from dedicate.store.db import make_engine, migrate
from dedicate.store.repos import Store
from tests.store.test_store import T0, endpoint, insert_old_endpoint


@pytest.fixture
def store(db_url: str) -> Store:
    engine = make_engine(db_url)
    migrate(engine)
    return Store(engine)


def route(id_: str = "ep_1", name: str = "alice/chat", owner: str = "alice") -> Route:
    return Route(id=id_, owner=owner, name=name, visibility=Visibility.PRIVATE, split=(), version=1,
                 created_at=T0, updated_at=T0)


def test_every_endpoint_of_the_previous_release_becomes_the_one_deployment_of_a_route(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine, "0007")
    live = replace(endpoint("endpoint-aaaa", "alice/tiny-00000001"), queued_replicas=2, queue_position=3,
                   min_queued_at=T0, autoscale_state='{"last": null}', target_concurrency=4.0)
    stopped = replace(endpoint("endpoint-bbbb", "bob/tiny-00000002", "bob"), intent=Intent.STOP,
                      state=EndpointState.STOPPED)
    gone = replace(endpoint("endpoint-cccc", "alice/tiny-00000003"), deleted_at=T0 + timedelta(hours=1),
                   state=EndpointState.STOPPED)
    for ep in (live, stopped, gone):
        insert_old_endpoint(engine, ep)
    with engine.begin() as conn:  # a replica, its billing interval and an event, as 0007 wrote them
        conn.execute(text(
            "INSERT INTO replicas (id, endpoint_id, engine, node, slots, token, host, port, created_at, "
            "probe_failures, version) VALUES ('r-1', 'endpoint-aaaa', 'synthetic', 'local', '0', 't', "
            "'127.0.0.1', 4321, :t, 0, 1)"), {"t": T0})
        conn.execute(text(
            "INSERT INTO billing_intervals (replica_id, endpoint_id, owner, hardware, cents_per_minute, "
            "started_at, last_seen_at, closed) VALUES ('r-1', 'endpoint-aaaa', 'alice', '1x_cpu', 0.05, :t, :t, "
            ":f)"), {"t": T0, "f": False})
        conn.execute(text("INSERT INTO endpoint_events (endpoint_id, at, kind, message) "
                          "VALUES ('endpoint-aaaa', :t, 'created', 'made')"), {"t": T0})
    migrate(engine)
    s = Store(engine)

    r = s.get_route("ep_aaaa")
    assert r is not None and r.id == route_id_for(live.id) == "ep_aaaa"
    assert (r.name, r.owner, r.visibility, r.version) == (live.name, "alice", Visibility.PRIVATE, 1)
    assert r.split == (SplitEntry("endpoint-aaaa", 1.0),) and r.created_at == T0
    assert s.get_route("alice/tiny-00000001") == r
    assert s.get_route("ep_bbbb") is not None
    assert s.get_route("ep_cccc") is None, "a deleted endpoint's route is deleted with it"

    after = s.get_endpoint("endpoint-aaaa")
    assert after is not None and (after.route_id, after.deployment_name) == ("ep_aaaa", "default")
    assert (after.queued_replicas, after.queue_position, after.min_queued_at, after.autoscale_state,
            after.target_concurrency) == (2, 3, T0, '{"last": null}', 4.0)
    assert [x.id for x in s.live_replicas("endpoint-aaaa")] == ["r-1"]
    assert len(s.intervals(endpoint_id="endpoint-aaaa")) == 1
    assert [e.kind for e in s.events("endpoint-aaaa")] == ["created"]
    assert {d.id for d in s.deployments_of(["ep_aaaa"])["ep_aaaa"]} == {"endpoint-aaaa"}
    engine.dispose()


def test_a_live_name_is_taken_once_and_free_again_after_its_route_is_deleted(store: Store) -> None:
    store.create_route(route("ep_1"))
    with pytest.raises(Conflict) as exc:
        store.create_route(route("ep_2"))
    assert "already exists" in str(exc.value)
    first = store.get_route("ep_1")
    assert first is not None and store.delete_route(first, T0)
    store.create_route(route("ep_2"))
    found = store.get_route("alice/chat")
    assert found is not None and found.id == "ep_2"


def test_a_route_change_is_guarded_by_its_version_which_is_its_etag(store: Store) -> None:
    store.create_route(route())
    r = store.get_route("ep_1")
    assert r is not None
    changed = store.update_route(r, {"visibility": "VISIBILITY_INTERNAL"}, T0 + timedelta(seconds=1))
    assert changed is not None and changed.visibility is Visibility.INTERNAL and changed.etag != r.etag
    assert store.update_route(r, {"visibility": "VISIBILITY_PRIVATE"}, T0) is None, "a stale etag changes nothing"
    again = store.get_route("ep_1")
    assert again == changed


def test_a_deployment_joining_an_unrouted_route_takes_its_traffic_without_changing_the_etag(store: Store) -> None:
    store.create_route(route())
    before = store.get_route("ep_1")
    assert before is not None
    blue = replace(endpoint("endpoint-b1", "alice/chat/blue"), route_id="ep_1", deployment_name="blue")
    green = replace(endpoint("endpoint-g1", "alice/chat/green"), route_id="ep_1", deployment_name="green")
    store.insert_endpoint(blue, ("created", "made"))
    store.insert_endpoint(green, ("created", "made"))
    after = store.get_route("ep_1")
    assert after is not None and after.split == (SplitEntry("endpoint-b1", 1.0),), "only the first joins"
    assert after.etag == before.etag
    assert [d.deployment_name for d in store.deployments_of(["ep_1"])["ep_1"]] == ["blue", "green"]


def test_a_deleted_deployment_leaves_the_split_and_a_v1_delete_retires_the_emptied_route(store: Store) -> None:
    store.create_route(route())
    blue = replace(endpoint("endpoint-b1", "alice/chat/blue"), route_id="ep_1", deployment_name="blue")
    store.insert_endpoint(blue, ("created", "made"))
    ep = store.get_endpoint(blue.id)
    assert ep is not None
    assert store.change_state(ep, T0, EndpointState.STOPPING, ("deleted", "endpoint deleted"), deleted_at=T0,
                              intent=Intent.STOP)
    store.leave_route(blue.id, "ep_1", T0, retire_if_empty=False)
    kept = store.get_route("ep_1")
    assert kept is not None and kept.split == () and kept.version == 1
    assert store.deployments_of(["ep_1"])["ep_1"] == []
    store.leave_route(blue.id, "ep_1", T0, retire_if_empty=True)
    assert store.get_route("ep_1") is None


def test_a_deleted_deployments_name_is_free_for_a_new_one(store: Store) -> None:
    store.create_route(route())
    blue = replace(endpoint("endpoint-b1", "alice/chat/blue"), route_id="ep_1", deployment_name="blue")
    store.insert_endpoint(blue, ("created", "made"))
    ep = store.get_endpoint(blue.id)
    assert ep is not None
    store.change_state(ep, T0, EndpointState.STOPPED, ("deleted", "endpoint deleted"), deleted_at=T0,
                       intent=Intent.STOP)
    again = replace(endpoint("endpoint-b2", "alice/chat/blue"), route_id="ep_1", deployment_name="blue")
    store.insert_endpoint(again, ("created", "made"))
    found = store.get_endpoint("alice/chat/blue")
    assert found is not None and found.id == "endpoint-b2"
    old = store.get_endpoint("endpoint-b1", include_deleted=True)
    assert old is not None and old.name.startswith("alice/chat/blue~")


def test_deployment_minutes_are_replaced_per_gateway_summed_across_them_and_kept_a_week(store: Store) -> None:
    from dedicate.domain import latency
    from dedicate.domain.records import DeploymentMinute

    minute = T0.replace(second=0, microsecond=0)

    def m(requests: int, ms: float, status: str = "200") -> DeploymentMinute:
        h = latency.empty()
        for _ in range(requests):
            latency.add(h, ms)
        return DeploymentMinute("endpoint-1", minute, requests, 0 if status == "200" else requests, 10 * requests,
                                5 * requests, {status: requests}, list(h), list(h))

    store.write_minutes("gw-a", [m(3, 20)], T0)
    store.write_minutes("gw-a", [m(5, 20)], T0)  # the same minute again: its whole count, replacing
    store.write_minutes("gw-b", [m(2, 900, "503")], T0)
    (got,) = store.minutes(["endpoint-1"], minute, minute + timedelta(minutes=1))
    assert (got.requests, got.failures, got.tokens_in, got.tokens_out) == (7, 2, 70, 35)
    assert got.statuses == {"200": 5, "503": 2} and sum(got.latency) == 7
    assert store.minutes(["endpoint-1"], minute + timedelta(minutes=1), minute + timedelta(minutes=2)) == []
    store.write_minutes("gw-a", [], T0 + timedelta(days=8))
    assert store.minutes(["endpoint-1"], minute, minute + timedelta(minutes=1)) == [], "older than a week: gone"


def test_the_gateways_read_of_routes_sees_every_change_though_it_rebuilds_only_changed_ones(store: Store) -> None:
    store.create_route(route())
    store.create_route(route("ep_2", "alice/other"))
    assert {r.name for r in store.live_routes()} == {"alice/chat", "alice/other"}
    blue = replace(endpoint("endpoint-b1", "alice/chat/blue"), route_id="ep_1", deployment_name="blue")
    store.insert_endpoint(blue, ("created", "made"))  # the split changes, the version does not
    first = store.get_route("ep_1")
    assert first is not None
    store.update_route(first, {"visibility": "VISIBILITY_INTERNAL"}, T0)
    other = store.get_route("ep_2")
    assert other is not None and store.delete_route(other, T0)
    (only,) = store.live_routes()
    assert only.split == (SplitEntry("endpoint-b1", 1.0),) and only.visibility is Visibility.INTERNAL
