"""The engine registry: one ``EngineSpec`` per engine, the only place that knows an engine by name.

Every engine speaks the same protocol to dedicate: OpenAI-compatible
``/v1/chat/completions`` and ``/v1/completions``, ``/health`` (200 once it can
serve) and ``/metrics``; it takes its bearer token from
``DEDICATE_REPLICA_TOKEN``, binds the host its runtime gives it and writes the
port it listens on to the port file its runtime names. What differs between
engines is here: the command line, whether it needs local weights, its
default concurrency per replica (a number handed to the autoscaling policy),
the ``[engines.<name>]`` options it accepts, and how its ``/metrics`` page is
read. The rest of the code asks the registry (``engine(name)``) and never
compares engine names.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from dedicate.autoscaler.policy import Target
from dedicate.domain.capacity import usable_bytes
from dedicate.domain.hardware import Hardware
from dedicate.domain.models import ModelSpec
from dedicate.engines.metrics import EngineSample, parse_engine_metrics


class Weights(Enum):
    """Where an engine's model weights come from."""

    NONE = "none"  # it needs no weights (synthetic)
    LOCAL = "local"  # a local directory, built or configured (transformers)
    LOCAL_OR_NAME = "local_or_name"  # a local directory if the model has one, else the engine fetches it (vLLM)


@dataclass(frozen=True)
class EngineLaunch:
    """What a replica's engine is started with; ``host`` and ``port_file`` come from the runtime."""

    model_dir: Path | None  # None where the engine needs no weights, or fetches them itself
    served_model_name: str
    replica_id: str
    instance: str
    port_file: Path
    host: str = "127.0.0.1"
    options: Mapping[str, object] = field(default_factory=dict)  # [engines.<name>] from the config
    model_name: str = ""  # the catalog name, for engines that fetch weights themselves
    gpu_count: int = 1


class OptionError(ValueError):
    """An ``[engines.<name>]`` option the engine does not accept, or of the wrong type."""


@dataclass(frozen=True)
class Option:
    kind: type  # int, float, bool or str
    flag: str | None = None  # the command-line flag it becomes, where it is passed on as one
    minimum: float | None = None

    @property
    def kind_name(self) -> str:
        return {int: "whole number", float: "number", str: "string", bool: "true or false"}[self.kind]

    def check(self, engine: str, name: str, value: object) -> object:
        where = f"engines.{engine}.{name}"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise OptionError(f"{where}: must be true or false, got {value!r}")
            return value
        if isinstance(value, bool):
            raise OptionError(f"{where}: must be a {self.kind_name}, got {value!r}")
        if self.kind is str:
            if not isinstance(value, str | int | float):
                raise OptionError(f"{where}: must be a string, got {value!r}")
            return str(value)
        try:
            number = self.kind(value) if isinstance(value, int | float) else self.kind(str(value))
        except ValueError as exc:
            raise OptionError(f"{where}: must be a {self.kind_name}, got {value!r}") from exc
        if self.kind is int and isinstance(value, float) and not value.is_integer():
            raise OptionError(f"{where}: must be a whole number, got {value!r}")
        if self.minimum is not None and number < self.minimum:
            raise OptionError(f"{where}: must be at least {self.minimum:g}, got {value!r}")
        return number


Argv = Callable[[EngineLaunch, str], list[str]]
Concurrency = Callable[[Hardware, ModelSpec, Mapping[str, object]], Target]


@dataclass(frozen=True)
class EngineSpec:
    name: str
    weights: Weights
    argv: Argv  # (launch, python) -> the command line
    default_concurrency: Concurrency  # requests one replica should carry at once, and why
    options: Mapping[str, Option]
    installed: Callable[[], bool]  # whether this machine can run it without the config naming it
    parse_metrics: Callable[[str], EngineSample] = parse_engine_metrics
    always_available: bool = False  # needs nothing beyond dedicate: enabled wherever the config names it

    @property
    def needs_local_weights(self) -> bool:
        return self.weights is Weights.LOCAL

    def check_options(self, raw: Mapping[str, object]) -> dict[str, object]:
        """The options checked and typed; an unknown name or a bad value raises ``OptionError``."""
        unknown = sorted(set(raw) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise OptionError(f"engines.{self.name}: unknown option(s) {', '.join(unknown)}; "
                              f"the {self.name} engine accepts: {known}")
        return {k: self.options[k].check(self.name, k, v) for k, v in raw.items()}

    def command(self, launch: EngineLaunch, python: str = sys.executable) -> list[str]:
        return self.argv(launch, python)


def _labels(launch: EngineLaunch) -> list[str]:
    return ["--replica-id", launch.replica_id, "--instance", launch.instance]


def _flags(spec_options: Mapping[str, Option], options: Mapping[str, object]) -> list[str]:
    out: list[str] = []
    for key, opt in spec_options.items():
        if key not in options or opt.flag is None:
            continue
        value = options[key]
        if opt.kind is bool:
            if value:
                out.append(opt.flag)
        else:
            out += [opt.flag, str(value)]
    return out


def _positive_int(value: object, default: int) -> int:
    try:
        n = int(str(value)) if value is not None else default
    except ValueError:
        return default
    return n if n >= 1 else default


# transformers -------------------------------------------------------------------------------------

TRANSFORMERS_MAX_CONCURRENCY = 1
TRANSFORMERS_OPTIONS = {"max_concurrency": Option(int, "--max-concurrency", 1)}


def _transformers_argv(launch: EngineLaunch, python: str) -> list[str]:
    return [
        python, "-m", "dedicate.engines.transformers_server",
        "--model-dir", str(launch.model_dir),
        "--served-model-name", launch.served_model_name,
        "--host", launch.host, "--port", "0", "--port-file", str(launch.port_file),
        *_flags(TRANSFORMERS_OPTIONS, launch.options), *_labels(launch),
    ]


def _transformers_concurrency(hardware: Hardware, model: ModelSpec, options: Mapping[str, object]) -> Target:
    n = _positive_int(options.get("max_concurrency"), TRANSFORMERS_MAX_CONCURRENCY)
    return Target(float(n), "default", f"the transformers engine generates {n} request(s) at once")


def _has(*modules: str) -> Callable[[], bool]:
    return lambda: all(importlib.util.find_spec(m) is not None for m in modules)


# synthetic ----------------------------------------------------------------------------------------

SYNTHETIC_MAX_STREAMS = 16
SYNTHETIC_OPTIONS = {
    "startup_delay_s": Option(float, "--startup-delay", 0),
    "ttft_s": Option(float, "--ttft", 0),
    "tokens_per_s": Option(float, "--tokens-per-s", 0),
    "max_streams": Option(int, "--max-streams", 1),
    "max_queue": Option(int, "--max-queue", 0),
    "fail_after_start": Option(bool, "--fail-after-start"),
}


def _synthetic_argv(launch: EngineLaunch, python: str) -> list[str]:
    return [
        python, "-m", "dedicate.engines.synthetic",
        "--served-model-name", launch.served_model_name,
        "--host", launch.host, "--port", "0", "--port-file", str(launch.port_file),
        *_flags(SYNTHETIC_OPTIONS, launch.options), *_labels(launch),
    ]


def _synthetic_concurrency(hardware: Hardware, model: ModelSpec, options: Mapping[str, object]) -> Target:
    n = _positive_int(options.get("max_streams"), SYNTHETIC_MAX_STREAMS)
    return Target(float(n), "default", f"the synthetic engine runs {n} streams at once")


# vllm ---------------------------------------------------------------------------------------------

TYPICAL_SEQUENCE_TOKENS = 2048  # prompt + reply of a typical chat turn
KV_ROOM = 2  # each in-flight sequence is given twice its typical length in KV cache
MAX_ENGINE_SEQUENCES = 256  # vLLM's default max_num_seqs
# Options passed on to vLLM's server as --name value (engines/vllm.py turns them into its flags).
VLLM_OPTIONS = {
    "gpu_memory_utilization": Option(float, None, 0),
    "max_model_len": Option(int, None, 1),
    "max_num_seqs": Option(int, None, 1),
    "dtype": Option(str),
    "tensor_parallel_size": Option(int, None, 1),
    "enforce_eager": Option(bool),
    "quantization": Option(str),
}


def _vllm_argv(launch: EngineLaunch, python: str) -> list[str]:
    model = str(launch.model_dir) if launch.model_dir is not None else launch.model_name
    options = [f"--option={k}={str(v).lower() if isinstance(v, bool) else v}"
               for k, v in sorted(launch.options.items())]
    return [
        python, "-m", "dedicate.engines.vllm", "--model", model,
        "--served-model-name", launch.served_model_name, "--host", launch.host,
        "--port-file", str(launch.port_file), "--gpu-count", str(launch.gpu_count),
        *options, *_labels(launch),
    ]


def kv_cache_concurrency(hardware: Hardware, model: ModelSpec, options: Mapping[str, object]) -> Target:
    """The sequences the KV cache holds with room to spare.

    ``(usable memory - weights - overhead) / kv bytes per token / (2 x 2048)``,
    between 1 and 256 (vLLM's ``max_num_seqs``).
    """
    weights = model.weight_bytes
    overhead = weights // 10 + 1024**3
    room = usable_bytes(hardware) - weights - overhead
    tokens = max(0, room) // max(1, model.kv_bytes_per_token())
    n = max(1, min(MAX_ENGINE_SEQUENCES, tokens // (KV_ROOM * TYPICAL_SEQUENCE_TOKENS)))
    return Target(float(n), "default",
                  f"the KV cache of {hardware.id} holds about {tokens:,} tokens of {model.name} beside its "
                  f"weights: {n} sequences of {TYPICAL_SEQUENCE_TOKENS} tokens with room to spare")


# the registry -------------------------------------------------------------------------------------

ENGINES: Mapping[str, EngineSpec] = {
    spec.name: spec for spec in (
        EngineSpec("transformers", Weights.LOCAL, _transformers_argv, _transformers_concurrency,
                   TRANSFORMERS_OPTIONS, _has("torch", "transformers")),
        EngineSpec("vllm", Weights.LOCAL_OR_NAME, _vllm_argv, kv_cache_concurrency, VLLM_OPTIONS,
                   _has("vllm")),
        # Never a default: it runs only where the config names it (a hardware shape, a node, enabled).
        EngineSpec("synthetic", Weights.NONE, _synthetic_argv, _synthetic_concurrency, SYNTHETIC_OPTIONS,
                   lambda: False, always_available=True),
    )
}


class UnknownEngine(KeyError):
    def __str__(self) -> str:
        return f"unknown engine {self.args[0]!r}; dedicate has: {', '.join(ENGINES)}"


def engine(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise UnknownEngine(name) from None


def installed_engines() -> set[str]:
    """The engines this machine can run without the config naming them."""
    return {name for name, spec in ENGINES.items() if spec.installed()}
