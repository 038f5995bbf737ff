"""The whole server's ASGI app, in process: a real store (SQLite), a manual clock, no background loops."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dedicate.clock import ManualClock
from dedicate.server import Parts, build_parts, create_app
from dedicate.settings import load_settings

T0 = datetime(2026, 11, 27, 3, 45, 52, 954291, tzinfo=UTC)

# Fixed slot memory and a declared GPU node: the answers do not depend on the machine running the tests.
CONFIG = """
[server]
availability_zones = ["local", "rack-2"]

[cpu]
slots = 4
slot_memory_gb = 12

[[nodes]]
name = "node-a"
gpu_type = "h100-80gb"
gpus = 8
engine = "synthetic"

[engines.synthetic]
startup_delay_s = 0.2
"""


@dataclass
class App:
    parts: Parts
    clock: ManualClock
    client: TestClient
    admin_key: str

    def as_(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"authorization": f"Bearer {key}"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    (tmp_path / "config.toml").write_text(CONFIG)
    settings = load_settings({"DEDICATE_DATA_DIR": str(tmp_path / "data"),
                              "DEDICATE_CONFIG": str(tmp_path / "config.toml")})
    clock = ManualClock(T0)
    parts = build_parts(settings, clock)
    _, secret = parts.store.create_key("admin", is_admin=True, name="admin", now=clock.now())
    # No `with`: the lifespan (reconciler, autoscaler, signal flusher) does not run.
    client = TestClient(create_app(parts), headers={"authorization": f"Bearer {secret}"})
    yield App(parts, clock, client, secret)
    client.close()
