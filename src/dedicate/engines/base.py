"""How each engine is started: the command line a runtime runs for a replica.

Every engine speaks the same protocol to dedicate: OpenAI-compatible
``/v1/chat/completions`` and ``/v1/completions``, ``/health`` (200 once it can
serve) and ``/metrics``; it takes its bearer token from
``DEDICATE_REPLICA_TOKEN`` and writes the port it listens on to a port file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("transformers", "vllm", "synthetic")


@dataclass(frozen=True)
class EngineLaunch:
    engine: str
    model_dir: Path | None  # None where the engine needs no weights (synthetic)
    served_model_name: str
    replica_id: str
    instance: str
    port_file: Path


def engine_argv(launch: EngineLaunch, python: str = sys.executable) -> list[str]:
    labels = ["--replica-id", launch.replica_id, "--instance", launch.instance]
    if launch.engine == "transformers":
        return [
            python, "-m", "dedicate.engines.transformers_server",
            "--model-dir", str(launch.model_dir),
            "--served-model-name", launch.served_model_name,
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(launch.port_file),
            *labels,
        ]
    raise ValueError(f"engine {launch.engine!r} cannot be launched by this installation")
