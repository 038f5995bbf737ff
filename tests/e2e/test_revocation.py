"""A key revoked through one server fails at once there and within a second in every other server on the
same database: two real `dedicate up` processes sharing one SQLite file, each with its own key cache."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.e2e.harness import Server

TTL_S = 1.0  # [gateway] key_cache_ttl_s: it may not be set higher


def test_a_key_revoked_on_one_server_fails_within_a_second_on_another(make_server: Callable[..., Server]) -> None:
    first = make_server("first")
    shared = f"sqlite:///{first.data_dir / 'dedicate.db'}"
    first.start()
    second = make_server("second", env={"DEDICATE_DATABASE_URL": shared}).start()
    admin = first.admin_key
    with httpx.Client(base_url=first.url, headers={"authorization": f"Bearer {admin}"}, timeout=30) as c:
        made = c.post("/v1/keys", json={"owner": "alice"}).json()
    key = {"authorization": f"Bearer {made['key']}"}
    for s in (first, second):  # each server has the key in its cache now
        for path in ("/v1/endpoints", "/v1/models"):
            assert httpx.get(f"{s.url}{path}", headers=key, timeout=30).status_code == 200, (s.url, path)
    with httpx.Client(base_url=first.url, headers={"authorization": f"Bearer {admin}"}, timeout=30) as c:
        assert c.delete(f"/v1/keys/{made['id']}").status_code == 200
    assert httpx.get(f"{first.url}/v1/endpoints", headers=key, timeout=30).status_code == 401, "at once where revoked"
    time.sleep(TTL_S + 0.2)  # the other server's cached answer has aged past its bound
    for path in ("/v1/endpoints", "/v1/models"):
        r = httpx.get(f"{second.url}{path}", headers=key, timeout=30)
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"], (path, r.text)
