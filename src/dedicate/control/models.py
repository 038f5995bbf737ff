"""Where a replica's model weights come from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dedicate.domain.models import ModelSpec


def model_dir(models_dir: Path, spec: ModelSpec) -> Path | None:
    """The local directory of ``spec``'s weights, or None for engines that fetch their own."""
    if spec.source.startswith("builtin:"):
        return models_dir / spec.source.removeprefix("builtin:")
    if spec.source == "hub":
        return None
    return Path(spec.source)


def ensure_builtin(models_dir: Path, spec: ModelSpec) -> Path | None:
    """Build a built-in model if it is missing (in a child process: torch stays out of the server)."""
    path = model_dir(models_dir, spec)
    if path is None or not spec.source.startswith("builtin:"):
        return path
    if not (path / ".complete").exists():
        subprocess.run(
            [sys.executable, "-m", "dedicate.engines.demo_model", str(path)],
            check=True, capture_output=True, timeout=600,
        )
    return path
