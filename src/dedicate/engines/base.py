"""How each engine is started: the command line a runtime runs for a replica.

Every engine speaks the same protocol to dedicate: OpenAI-compatible
``/v1/chat/completions`` and ``/v1/completions``, ``/health`` (200 once it can
serve) and ``/metrics``; it takes its bearer token from
``DEDICATE_REPLICA_TOKEN`` and writes the port it listens on to a port file.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    options: Mapping[str, object] = field(default_factory=dict)  # engine settings from the config
    model_name: str = ""  # the catalog name, for engines that fetch weights themselves
    gpu_count: int = 1


SYNTHETIC_OPTIONS = {
    "startup_delay_s": "--startup-delay",
    "ttft_s": "--ttft",
    "tokens_per_s": "--tokens-per-s",
    "max_streams": "--max-streams",
    "max_queue": "--max-queue",
}


def engine_argv(launch: EngineLaunch, python: str = sys.executable) -> list[str]:
    labels = ["--replica-id", launch.replica_id, "--instance", launch.instance]
    if launch.engine == "transformers":
        concurrency = ["--max-concurrency", str(launch.options["max_concurrency"])] \
            if "max_concurrency" in launch.options else []
        return [
            python, "-m", "dedicate.engines.transformers_server",
            "--model-dir", str(launch.model_dir),
            "--served-model-name", launch.served_model_name,
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(launch.port_file),
            *concurrency, *labels,
        ]
    if launch.engine == "vllm":
        model = str(launch.model_dir) if launch.model_dir is not None else launch.model_name
        options = [f"--option={k}={v}" for k, v in sorted(launch.options.items())]
        return [
            python, "-m", "dedicate.engines.vllm", "--model", model,
            "--served-model-name", launch.served_model_name, "--host", "127.0.0.1",
            "--port-file", str(launch.port_file), "--gpu-count", str(launch.gpu_count),
            *options, *labels,
        ]
    if launch.engine == "synthetic":
        extra: list[str] = []
        for key, flag in SYNTHETIC_OPTIONS.items():
            if key in launch.options:
                extra += [flag, str(launch.options[key])]
        if launch.options.get("fail_after_start"):
            extra.append("--fail-after-start")
        return [
            python, "-m", "dedicate.engines.synthetic",
            "--served-model-name", launch.served_model_name,
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(launch.port_file),
            *extra, *labels,
        ]
    raise ValueError(f"engine {launch.engine!r} cannot be launched by this installation")
