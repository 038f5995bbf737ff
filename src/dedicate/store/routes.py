"""Routes (v2's endpoints) and which deployments they hold.

A route's own fields (name, visibility, traffic split) change through ``update_route``, guarded
by its version, which is its etag. What its deployments do to it (the first one taking the
traffic of an unrouted route, a deleted one leaving the split) goes through ``_resplit`` and
leaves the version alone: Together's CLI patches the split with an etag it read before it made
or changed a deployment.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dedicate.domain.errors import Conflict
from dedicate.domain.records import Event
from dedicate.domain.routes import Route, SplitEntry, Visibility
from dedicate.store.base import StoreBase
from dedicate.store.columns import CHUNK, row_reader
from dedicate.store.snapshot import RowCache
from dedicate.store.tables import EndpointRow, EventRow, RouteRow


def _split(text: str) -> tuple[SplitEntry, ...]:
    return tuple(SplitEntry(str(d), float(w)) for d, w in json.loads(text or "[]"))


def split_json(split: Iterable[SplitEntry]) -> str:
    return json.dumps([[e.deployment, e.weight] for e in split])


def _route(r: Any) -> Route:
    """A route from its row: an ORM ``RouteRow`` or a plain one of ``row_reader``."""
    return Route(id=r.id, owner=r.owner, name=r.name, visibility=Visibility(r.visibility),
                 split=_split(r.traffic_split), version=r.version, created_at=r.created_at,
                 updated_at=r.updated_at, deleted_at=r.deleted_at)


def name_taken(name: str) -> Conflict:
    return Conflict(f"endpoint {name!r} already exists; pick another name, or deploy to it with "
                    "POST .../endpoints/{id}/deployments", code="endpoint_exists")


ORDERS = {"created_at": RouteRow.created_at, "updated_at": RouteRow.updated_at}


class RouteStore(StoreBase):
    def add_route(self, s: Session, route: Route) -> None:
        """In the caller's transaction: a new route (its name free among the live ones)."""
        self.ensure_owner(s, route.owner, route.created_at)
        s.add(RouteRow(id=route.id, owner=route.owner, name=route.name, visibility=route.visibility.value,
                       traffic_split=split_json(route.split), version=route.version,
                       created_at=route.created_at, updated_at=route.updated_at, deleted_at=None))

    def create_route(self, route: Route) -> None:
        try:
            with self.tx() as s:
                self.add_route(s, route)
        except IntegrityError as exc:
            raise name_taken(route.name) from exc

    def get_route(self, key: str) -> Route | None:
        """A live route by id (``ep_…``) or by qualified name."""
        with self.tx() as s:
            col = RouteRow.id if key.startswith("ep_") else RouteRow.name
            row = s.scalars(select(RouteRow).where(col == key, RouteRow.deleted_at.is_(None))).first()
            return None if row is None else _route(row)

    _live_route_rows: RowCache[Route]  # made by Store.__init__

    def live_routes(self) -> list[Route]:
        """Every live route: the gateway's table of names, read every ``table_ttl_s`` under traffic.

        Through a ``RowCache`` keyed by the version and the split (which deployments change without
        the version): a read of 2,000 unchanged routes builds none (the ORM took 40 ms for them).
        """
        with self.tx() as s:
            keys = [(rid, (version, split)) for rid, version, split in self.raw(
                s, "SELECT id, version, traffic_split FROM routes WHERE deleted_at IS NULL ORDER BY created_at, id")]
        return self._live_route_rows.read(keys, self._route_rows, complete=True)

    def _route_rows(self, ids: list[str]) -> Iterable[tuple[str, Route]]:
        with self.tx() as s:
            cols, row = row_reader(s.get_bind().dialect, "routes")
            for i in range(0, len(ids), CHUNK):
                chunk = ids[i:i + CHUNK]
                marks = ", ".join("?" for _ in chunk)
                for r in self.raw(s, f"SELECT {cols} FROM routes WHERE id IN ({marks})", tuple(chunk)):
                    route = _route(row(r))
                    yield route.id, route

    def routes_page(self, owner: str | None, *, name: str | None, order: str, descending: bool,
                    after: Route | None, limit: int, visibility: Visibility | None = None) -> list[Route]:
        """Up to ``limit`` live routes of ``owner`` (None: every owner's) in (``order``, id) order, after the
        route ``after``; with ``visibility``, only those."""
        column = ORDERS[order]
        with self.tx() as s:
            q = select(RouteRow).where(RouteRow.deleted_at.is_(None))
            if owner is not None:
                q = q.where(RouteRow.owner == owner)
            if visibility is not None:
                q = q.where(RouteRow.visibility == visibility.value)
            if name is not None:
                q = q.where(RouteRow.name == name)
            if after is not None:
                mark = getattr(after, order)
                if descending:
                    q = q.where((column < mark) | ((column == mark) & (RouteRow.id < after.id)))
                else:
                    q = q.where((column > mark) | ((column == mark) & (RouteRow.id > after.id)))
            keys = (column.desc(), RouteRow.id.desc()) if descending else (column, RouteRow.id)
            return [_route(r) for r in s.scalars(q.order_by(*keys).limit(limit))]

    def update_route(self, route: Route, changes: dict[str, Any], now: datetime) -> Route | None:
        """The route with ``changes`` (name, visibility, split), if it is still at its version; else None."""
        values: dict[str, Any] = {"version": route.version + 1, "updated_at": now}
        for k, v in changes.items():
            if k == "split":
                values["traffic_split"] = split_json(v)
            elif k == "visibility":
                values["visibility"] = Visibility(v).value
            else:
                values[k] = v
        try:
            with self.tx() as s:
                done = s.execute(update(RouteRow).where(RouteRow.id == route.id, RouteRow.version == route.version,
                                                        RouteRow.deleted_at.is_(None)).values(**values))
                if done.rowcount != 1:  # type: ignore[attr-defined]
                    return None
                row = s.get(RouteRow, route.id)
                assert row is not None
                s.refresh(row)
                return _route(row)
        except IntegrityError as exc:
            raise name_taken(str(changes.get("name", route.name))) from exc

    def delete_route(self, route: Route, now: datetime) -> bool:
        with self.tx() as s:
            done = s.execute(update(RouteRow).where(RouteRow.id == route.id, RouteRow.deleted_at.is_(None))
                             .values(deleted_at=now, updated_at=now, version=route.version + 1))
            return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    def _resplit(self, s: Session, route_id: str, change: Callable[[tuple[SplitEntry, ...]], tuple[SplitEntry, ...]]
                 ) -> None:
        """The split as a deployment's life changes it; the version (the etag) stays."""
        row = s.execute(select(RouteRow).where(RouteRow.id == route_id).with_for_update()).scalars().first()
        if row is not None:
            row.traffic_split = split_json(change(_split(row.traffic_split)))

    def join_split_if_unrouted(self, s: Session, route_id: str, deployment: str) -> None:
        """In the caller's transaction: a route with an empty split sends its traffic to ``deployment``."""
        self._resplit(s, route_id, lambda split: split or (SplitEntry(deployment, 1.0),))

    def leave_route(self, deployment: str, route_id: str, now: datetime, *, retire_if_empty: bool) -> None:
        """A deleted deployment leaves its route's split; with ``retire_if_empty`` (a v1 delete), a route
        left with no live deployment is deleted too."""
        with self.tx() as s:
            self._resplit(s, route_id, lambda split: tuple(e for e in split if e.deployment != deployment))
            if retire_if_empty:
                left = s.scalars(select(EndpointRow.id).where(EndpointRow.route_id == route_id,
                                                              EndpointRow.deleted_at.is_(None))).first()
                if left is None:
                    s.execute(update(RouteRow).where(RouteRow.id == route_id, RouteRow.deleted_at.is_(None))
                              .values(deleted_at=now, updated_at=now))

    def free_deployment_name(self, s: Session, name: str) -> None:
        """In the caller's transaction: a deleted deployment gives up its name (``name~<id>``) for reuse."""
        row = s.scalars(select(EndpointRow).where(EndpointRow.name == name)).first()
        if row is not None and row.deleted_at is not None:
            row.name = f"{name}~{row.id.removeprefix('endpoint-')[:8]}"
            row.version += 1

    def route_events(self, route_id: str, *, deployments: Sequence[str] | None, before: int | None,
                     since: datetime | None, until: datetime | None, batch: int) -> list[tuple[Event, str]]:
        """Up to ``batch`` events of the route's deployments (deleted ones too), newest first, with each
        one's deployment name; ``before`` is an event id (the cursor)."""
        with self.tx() as s:
            members = select(EndpointRow.id).where(EndpointRow.route_id == route_id)
            if deployments is not None:
                members = members.where(EndpointRow.id.in_(list(deployments)))
            q = (select(EventRow, EndpointRow.deployment_name).join(EndpointRow, EndpointRow.id == EventRow.endpoint_id)
                 .where(EventRow.endpoint_id.in_(members)))
            if before is not None:
                q = q.where(EventRow.id < before)
            if since is not None:
                q = q.where(EventRow.at >= since)
            if until is not None:
                q = q.where(EventRow.at <= until)
            rows = s.execute(q.order_by(EventRow.id.desc()).limit(batch)).all()
            return [(Event(r.id, r.endpoint_id, r.at, r.kind, r.message), name or "default") for r, name in rows]

