"""The server's ``/metrics``: admin only, one page for the server and its gateway, a bounded number of queries."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from dedicate.clock import ManualClock
from dedicate.domain.endpoints import EndpointState
from dedicate.engines.metrics import parse_engine_metrics
from dedicate.server import Parts, build_parts, create_app
from dedicate.settings import load_settings
from dedicate.store.tables import IntervalRow
from tests.gateway.fakes import make_endpoint, make_replica

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
MONTH = datetime(2026, 3, 1, tzinfo=UTC)


def parts_on(tmp_path: Path, db_url: str) -> tuple[Parts, str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[cpu]\nslots = 0\n[gpu]\ndiscover = false\n")
    settings = load_settings({"DEDICATE_DATA_DIR": str(tmp_path / "d"), "DEDICATE_CONFIG": str(cfg),
                              "DEDICATE_DATABASE_URL": db_url})
    parts = build_parts(settings, ManualClock(NOW))
    _, secret = parts.store.create_key("admin", is_admin=True, name="admin", now=NOW)
    return parts, secret


def add_endpoints(parts: Parts, first: int, count: int) -> None:
    """Endpoints ``first``.. with one ready replica each and billed time this month (and last month)."""
    states = (EndpointState.STARTED, EndpointState.STOPPED, EndpointState.PENDING)
    for i in range(first, first + count):
        ep = replace(make_endpoint(f"owner{i % 3}/ep{i}", f"owner{i % 3}", state=states[i % 3]),
                     cents_per_minute=Decimal("1.5"))
        parts.store.insert_endpoint(ep, ("created", "test"))
        replica = make_replica(f"r{i}", ep, "http://127.0.0.1:9")
        parts.store.insert_replica(replica)
        with parts.store.tx() as s:
            for j, (start, minutes) in enumerate([(MONTH - timedelta(hours=1), 90),  # half before the month
                                                  (MONTH + timedelta(days=2), i + 1),
                                                  (NOW - timedelta(minutes=1), 10)]):  # runs past now
                s.add(IntervalRow(replica_id=replica.id, endpoint_id=ep.id, owner=ep.owner,
                                  hardware="1x_cpu", cents_per_minute=Decimal("1.5"), started_at=start,
                                  last_seen_at=start + timedelta(minutes=minutes), closed=j < 2))


def scrape(parts: Parts, secret: str | None) -> tuple[httpx.Response, int]:
    """GET /metrics; the response and the SQL statements it ran."""
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(parts))
        headers = {"authorization": f"Bearer {secret}"} if secret else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://dedicate") as c:
            return await c.get("/metrics", headers=headers)

    event.listen(parts.store.engine, "before_cursor_execute", count)
    try:
        response = asyncio.run(get())
    finally:
        event.remove(parts.store.engine, "before_cursor_execute", count)
    # The caller's key is looked up through a cache with a one-second lifetime: when, depends on the clock.
    return response, len([st for st in statements if "FROM api_keys" not in st])


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_make_the_same_queries_for_3_endpoints_as_for_30(tmp_path: Path, db_url: str) -> None:
    parts, secret = parts_on(tmp_path, db_url)
    add_endpoints(parts, 0, 3)
    few, few_queries = scrape(parts, secret)
    assert few.status_code == 200, few.text
    assert few.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    add_endpoints(parts, 3, 27)
    many, many_queries = scrape(parts, secret)
    assert many.status_code == 200
    assert few_queries == many_queries, (few_queries, many_queries)
    assert many_queries <= 5, "the key, the endpoints, the replicas, the month's intervals"

    values = samples(many.text)
    eps = parts.store.list_endpoints()
    assert len(eps) == 30
    for e in eps:
        # The same figure as the endpoint's own page, which reads its intervals alone.
        expected = str(parts.services.billing.endpoint_cost(e, 0).cost_this_month_cents)
        i = int(e.name.rsplit("ep", 1)[1])
        assert expected == str(round(Decimal("1.5") * (30 + i + 1 + 1)))  # 30 of the 90, then i + 1, then 1
        assert values[f'dedicate_endpoint_cost_this_month_cents{{endpoint="{e.id}",owner="{e.owner}"}}'] \
            == float(expected)
    assert values['dedicate_endpoints{state="STARTED"}'] == 10
    assert values['dedicate_endpoints{state="STOPPED"}'] == 10
    assert values['dedicate_endpoints{state="PENDING"}'] == 10
    assert sum(v for k, v in values.items() if k.startswith("dedicate_replicas{")) == 30
    lines = many.text.splitlines()
    assert "# TYPE dedicate_endpoints gauge" in lines
    assert "# TYPE dedicate_endpoint_cost_this_month_cents gauge" in lines
    assert "# TYPE dedicate_gateway_endpoint_requests_total counter" in lines, "the gateway's families follow"
    assert parse_engine_metrics(many.text).waiting is None


def test_metrics_are_for_admins(tmp_path: Path) -> None:
    parts, _ = parts_on(tmp_path, f"sqlite:///{tmp_path / 'm.db'}")
    _, alice = parts.store.create_key("alice", is_admin=False, name="a", now=NOW)
    assert scrape(parts, None)[0].status_code == 401
    assert scrape(parts, alice)[0].status_code == 403
