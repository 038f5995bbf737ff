"""API keys: who is calling."""

from __future__ import annotations

from dataclasses import dataclass

from dedicate.domain.errors import Unauthorized
from dedicate.domain.records import KeyScope
from dedicate.store.repos import Store

AUTH_HINT = "pass your dedicate API key as 'Authorization: Bearer <key>'"


@dataclass(frozen=True)
class Principal:
    owner: str
    is_admin: bool
    key_id: str
    scope: KeyScope = "manage"

    @property
    def manages(self) -> bool:
        """May use the management API (an ``inference`` key may only call models)."""
        return self.scope == "manage"


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(store: Store, authorization: str | None) -> Principal:
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized(f"authentication required: {AUTH_HINT}")
    key = store.find_key(token)
    if key is None:
        raise Unauthorized(f"authentication failed: the API key is not valid; {AUTH_HINT}")
    if key.revoked_at is not None:
        raise Unauthorized(
            f"authentication failed: the API key {key.prefix}… was revoked; create a new one "
            "with `dedicate keys create`")
    return Principal(key.owner, key.is_admin, key.id, key.scope)
