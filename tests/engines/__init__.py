"""Tests for dedicate.engines: the demo model and the transformers model server."""

from __future__ import annotations

from pathlib import Path

import pytest

from dedicate.engines.demo_model import build_demo_model


def session_demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's seed-0 demo model; built once, since the build is idempotent.

    Both test modules call this from their own fixture; the second call finds
    the complete build and returns at once.
    """
    return build_demo_model(tmp_path_factory.getbasetemp() / "tiny-chat", seed=0)
