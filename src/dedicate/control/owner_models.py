"""Owners' models: fine-tunes registered from a directory of weights, checked against their base.

A fine-tune deploys on the shapes its base fits (its spec is the base's, under its own name,
``domain/modelbook.py``). Its weights stay where they were registered from: a directory under
the installation's model root (``<data dir>/models``), in ``owners/<owner>/`` for an owner's
key, anywhere under the root for an admin's; a path that leaves it is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dedicate.control.auth import Principal
from dedicate.control.inputs_v2 import ModelIn
from dedicate.control.models import model_dir
from dedicate.control.offerings import Offerings, config_not_found, model_not_found
from dedicate.control.services import Services
from dedicate.domain.errors import Conflict, InvalidRequest, NotFound
from dedicate.domain.finetunes import ADAPTER, check_adapter, check_full_weights
from dedicate.domain.modelbook import ModelBook
from dedicate.domain.offerings import Offer, model_id
from dedicate.domain.records import OwnerModel
from dedicate.domain.routes import qualified

SAFE_WEIGHTS = ".safetensors"  # the only weights dedicate loads: a pickle (*.bin, *.pt) can run code as it loads
PICKLED_WEIGHTS = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl"})


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"{path.parent} has no {path.name}: {what}", param="path") from None
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{path} cannot be read as JSON: {exc}", param="path") from None
    if not isinstance(found, dict):
        raise InvalidRequest(f"{path} must hold a JSON object", param="path")
    return found


class OwnerModels:
    def __init__(self, services: Services, offerings: Offerings) -> None:
        self.svc = services
        self.offerings = offerings

    @property
    def root(self) -> Path:
        return self.svc.settings.models_dir.resolve()

    def _directory(self, principal: Principal, owner: str, given: str) -> Path:
        allowed = self.root if principal.is_admin else self.root / "owners" / owner
        if "://" in given or given.lower().startswith("file:"):
            raise InvalidRequest(f"path {given!r} is a URL: dedicate never fetches weights; put them in a directory "
                                 f"under {allowed} (or upload them), and give that directory", param="path")
        path = (self.root / given).resolve() if not Path(given).is_absolute() else Path(given).resolve()
        if not path.is_relative_to(allowed):
            raise InvalidRequest(f"path {given!r} is not under {allowed}: register weights from there",
                                 param="path")
        if not path.is_dir():
            raise InvalidRequest(f"path {given!r} is not a directory of weights", param="path")
        suffixes = {p.suffix for p in path.iterdir()}
        if SAFE_WEIGHTS not in suffixes:
            pickled = sorted(suffixes & PICKLED_WEIGHTS)
            raise InvalidRequest(
                f"{path} holds no *.safetensors weights" + (
                    f", only pickled ones ({', '.join('*' + s for s in pickled)}), which can run code as they "
                    "load: convert them to safetensors (safetensors' convert script, or save_pretrained with "
                    "safe_serialization=True)" if pickled else ""), param="path")
        return path

    def register(self, principal: Principal, owner: str, body: ModelIn) -> OwnerModel:
        name = qualified(owner, body.name)
        try:
            base = self.offerings.supported_model(body.base_model_id)
        except NotFound:  # said the way Together says it
            supported = ", ".join(m.model.name for m in self.offerings.supported())
            raise InvalidRequest(f"base model {body.base_model_id!r} is not supported here: your fine-tuned model "
                                 f"must be based on a supported base model ({supported})",
                                 param="baseModelId") from None
        path = self._directory(principal, owner, body.path)
        if body.type == ADAPTER:
            check_adapter(base.model, _json(path / "adapter_config.json", "adapter weights name their base there"))
        else:
            base_dir = model_dir(self.svc.settings.models_dir, base.model)
            base_config = None
            if base_dir is not None and (base_dir / "config.json").is_file():
                base_config = _json(base_dir / "config.json", "the base's own")
            check_full_weights(base.model, base_config, _json(path / "config.json", "full weights describe "
                                                                                     "their shape there"))
        m = OwnerModel(model_id(name), owner, name, base.model.name, body.type, str(path), body.description,
                       self.svc.clock.now())
        self.svc.store.register_model(m)
        return m

    def get(self, owner: str | None, key: str) -> OwnerModel:
        """An owner's model by id or name (``owner`` None: anyone's, for an admin)."""
        m = self.svc.store.owner_model(key)
        if m is None or (owner is not None and m.owner != owner):
            raise model_not_found(key)
        return m

    def delete(self, owner: str, key: str) -> None:
        """Deletes a registered model once no deployment runs it; its weights stay where they are."""
        m = self.get(owner, key)
        using = self.svc.store.delete_model(m, self.svc.clock.now())
        if using:
            raise Conflict(f"model {m.name} is deployed as {', '.join(using)}; delete those deployments first",
                           code="model_in_use")
        models = self.svc.catalog.models
        if isinstance(models, ModelBook):
            models.forget(m.name)

    def offers(self, m: OwnerModel) -> list[Offer]:
        """A fine-tune's configs: its base's shapes, under its own name (none for an adapter: no engine here
        serves adapters yet)."""
        models = self.svc.catalog.models
        spec = models.registered(m.name, m.base, m.path) if isinstance(models, ModelBook) else None
        if spec is None or m.kind == ADAPTER:
            return []
        return [Offer(spec, o.hardware, o.engine) for o in self.offerings.offers() if o.model.name == m.base]

    def config(self, owner: str | None, config_id: str) -> Offer:
        """A config of the catalog, or (for ``owner``) of one of the owner's fine-tunes."""
        try:
            return self.offerings.config(config_id)
        except NotFound:
            if owner is None:
                raise
        for m in self.svc.store.owner_models(owner):
            for offer in self.offers(m):
                if offer.config_id == config_id:
                    return offer
        raise config_not_found(config_id)

    def configs(self, owner: str | None, reference: str | None) -> list[Offer]:
        """The catalog's configs, or one model's: a catalog model's, or one of the owner's fine-tunes'."""
        key = reference.rsplit("/", 1)[-1] if reference and reference.startswith("projects/") else reference
        if owner is not None and key is not None:
            registered = self.svc.store.owner_model(key)
            if registered is not None and registered.owner == owner:
                return self.offers(registered)
        return self.offerings.configs(reference)
