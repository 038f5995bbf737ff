"""The models owners registered: fine-tunes of catalog models, and where their weights are."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from dedicate.domain.errors import Conflict
from dedicate.domain.records import OwnerModel
from dedicate.store.base import StoreBase
from dedicate.store.tables import EndpointRow, OwnerModelRow


def _owner_model(r: OwnerModelRow) -> OwnerModel:
    return OwnerModel(r.id, r.owner, r.name, r.base, r.kind, r.path, r.description, r.created_at)


class OwnerModelStore(StoreBase):
    def register_model(self, m: OwnerModel) -> None:
        try:
            with self.tx() as s:
                self.ensure_owner(s, m.owner, m.created_at)
                s.add(OwnerModelRow(id=m.id, owner=m.owner, name=m.name, base=m.base, kind=m.kind, path=m.path,
                                    description=m.description, created_at=m.created_at))
        except IntegrityError as exc:
            raise Conflict(f"model {m.name!r} already exists; pick another name", code="model_exists") from exc

    def owner_model(self, key: str) -> OwnerModel | None:
        """A live registered model by id (``ml_…``) or by its qualified name."""
        with self.tx() as s:
            col = OwnerModelRow.id if key.startswith("ml_") else OwnerModelRow.name
            row = s.scalars(select(OwnerModelRow).where(col == key, OwnerModelRow.deleted_at.is_(None))).first()
            return None if row is None else _owner_model(row)

    def owner_models(self, owner: str | None) -> list[OwnerModel]:
        """An owner's live registered models (every owner's for None), oldest first."""
        with self.tx() as s:
            q = select(OwnerModelRow).where(OwnerModelRow.deleted_at.is_(None))
            if owner is not None:
                q = q.where(OwnerModelRow.owner == owner)
            return [_owner_model(r) for r in s.scalars(q.order_by(OwnerModelRow.created_at, OwnerModelRow.id))]

    def model_weights(self, name: str) -> tuple[str, str] | None:
        """(base, directory) of the registered model ``name``: what the model book reads through."""
        m = self.owner_model(name)
        return None if m is None else (m.base, m.path)

    def delete_model(self, m: OwnerModel, now: datetime) -> list[str]:
        """Deletes ``m`` unless live deployments run it; returns their names (empty: deleted)."""
        with self.tx() as s:
            using = list(s.scalars(select(EndpointRow.name).where(EndpointRow.model == m.name,
                                                                  EndpointRow.deleted_at.is_(None))))
            if not using:  # the id is the name's: the deleted row gives it up, for a model of that name again
                s.execute(update(OwnerModelRow).where(OwnerModelRow.id == m.id, OwnerModelRow.deleted_at.is_(None))
                          .values(deleted_at=now, id=f"{m.id}~{now.timestamp():.0f}"))
            return using
