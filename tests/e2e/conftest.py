"""End-to-end fixtures: real server processes with real replica processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dedicate.engines.demo_model import build_demo_model
from tests.e2e.harness import FAST_CONFIG, Server


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, built once for the whole session and linked into each server's data dir."""
    return build_demo_model(tmp_path_factory.mktemp("models") / "tiny-chat")


@pytest.fixture
def make_server(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(name: str = "server", config: str = FAST_CONFIG, env: dict[str, str] | None = None) -> Server:
        s = Server(tmp_path / name, env=env, config=config, shared_models=tiny_model)
        servers.append(s)
        return s

    yield make
    failures = []
    for s in servers:  # every server is cleaned up, even after one failed to be
        try:
            s.cleanup()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, failures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    """One running server shared by a module's tests (each test makes its own endpoints)."""
    s = Server(tmp_path_factory.mktemp("srv"), shared_models=tiny_model)
    try:
        yield s.start()
    finally:
        s.cleanup()
