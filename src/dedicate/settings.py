"""Settings: the TOML file named by DEDICATE_CONFIG, overridden by environment variables.

    DEDICATE_CONFIG        path of the TOML file (optional)
    DEDICATE_HOST          bind address (default 127.0.0.1)
    DEDICATE_PORT          port (default 8700; 0 picks a free one, written to <data dir>/port)
    DEDICATE_DATA_DIR      data directory (default ~/.local/share/dedicate)
    DEDICATE_DATABASE_URL  SQLAlchemy URL (default SQLite in the data directory)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from dedicate.domain.catalog import (
    DEFAULT_CPU_CENTS_PER_MINUTE,
    DEFAULT_MODELS,
    Catalog,
    cpu_hardware,
    default_hardware,
    hardware_from_config,
)
from dedicate.domain.hardware import Hardware
from dedicate.domain.models import DTYPE_BYTES, ModelSpec
from dedicate.engines.registry import ENGINES, OptionError, installed_engines
from dedicate.runtimes.base import Node


class ConfigError(Exception):
    """The config file is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class GatewaySettings:
    """The ``[gateway]`` table: limits and timeouts of the OpenAI-compatible gateway (docs/gateway.md)."""

    hold_s: float = 30.0  # how long a request waits for a ready replica
    queue_size: int = 256  # requests waiting per endpoint, beyond which 429
    retry_after_s: float = 5.0  # Retry-After on "no ready replica" and "queue full"
    try_timeout_s: float = 120.0  # per try, until the replica's response headers
    idle_timeout_s: float = 600.0  # silence allowed inside an answer
    connect_timeout_s: float = 2.0
    max_tries: int = 3
    max_body_bytes: int = 4 << 20
    max_tokens: int = 131072  # cap on max_tokens / max_completion_tokens; 0: none
    inject_usage: bool = True  # ask streams for usage, and drop that chunk from what the client sees
    key_rps: float = 0.0  # 0: no limit
    key_burst: int = 0
    key_concurrency: int = 0
    owner_rps: float = 0.0
    owner_burst: int = 0
    owner_concurrency: int = 0
    failures_to_eject: int = 3
    ejection_base_s: float = 1.0
    ejection_max_s: float = 30.0
    key_cache_ttl_s: float = 1.0
    table_ttl_s: float = 0.5
    signals_interval_s: float = 2.0


@dataclass(frozen=True)
class AutoscalingSettings:
    """The ``[autoscaling]`` table (docs/autoscaling.md)."""

    interval_s: float = 2.0  # one pass
    stabilisation_s: float = 300.0  # scale-down stabilisation window
    kv_cache_target: float = 0.8
    signal_fresh_s: float = 15.0  # gateway signal rows older than this are ignored
    scrape_engines: bool = True  # read the engines' /metrics for queue and KV-cache figures

    @property
    def bucket_s(self) -> float:
        return min(10.0, self.stabilisation_s / 30)


T = TypeVar("T")


def _table(name: str, raw: object, cls: type[T], *, at_least_one: Collection[str] = (),
           positive: Collection[str] = (), at_most: Mapping[str, tuple[float, str]] | None = None) -> T:
    """A config table read into a frozen dataclass of defaults: each value checked by its default's type.

    Unknown names are refused (a typo must not be silently ignored). Whole numbers are at least 0, or
    1 for ``at_least_one``; other numbers at least 0, or above 0 for ``positive``; ``at_most`` caps a
    number, with the reason to say.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = set(getattr(cls, "__dataclass_fields__", {}))
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{name}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    caps = at_most or {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = getattr(cls, key)
        where = f"{name}.{key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: must be true or false")
            values[key] = value
        elif isinstance(default, int):
            values[key] = _int(value, where, 1 if key in at_least_one else 0)
        else:
            number = _float(value, where) if key in positive else _float_or_zero(value, where)
            if key in caps and number > caps[key][0]:
                raise ConfigError(f"{where}: at most {caps[key][0]:g}{caps[key][1]}, got {number:g}")
            values[key] = number
    return cls(**values)


def _float_or_zero(value: object, where: str) -> float:
    try:
        x = float(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a number") from exc
    if not x >= 0:
        raise ConfigError(f"{where}: must not be negative, got {x}")
    return x


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    data_dir: Path
    database_url: str
    catalog: Catalog
    cpu_slots: int
    cpu_slot_memory_gb: int
    probe_failure_threshold: int = 3
    max_failures_before_ready: int = 3
    reconcile_interval_s: float = 1.0  # also the probe interval: every pass probes every replica
    extra: dict[str, Any] = field(default_factory=dict)
    engine_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # [engines.<name>], checked
    declared_nodes: tuple[Node, ...] = ()
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)

    @property
    def replicas_dir(self) -> Path:
        return self.data_dir / "replicas"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def _memory_gb() -> int:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return max(1, int(pages / 10**9))
    except (ValueError, OSError):
        return 8


def _engine_options(raw: object) -> tuple[set[str], dict[str, dict[str, object]]]:
    """The ``[engines]`` table: ``enabled`` engine names and one options table per engine, checked now.

    A bad option fails at start-up with its name, not after a replica crashed on it three times.
    """
    if not isinstance(raw, dict):
        raise ConfigError("[engines] must be a table")
    enabled = raw.get("enabled", [])
    if not isinstance(enabled, list) or not all(isinstance(e, str) for e in enabled):
        raise ConfigError("engines.enabled: must be a list of engine names")
    for name in enabled:
        if name not in ENGINES:
            raise ConfigError(f"engines.enabled: unknown engine {name!r}; dedicate has: {', '.join(ENGINES)}")
    options: dict[str, dict[str, object]] = {}
    for name, table in raw.items():
        if name == "enabled":
            continue
        if name not in ENGINES:
            raise ConfigError(f"[engines.{name}]: unknown engine; dedicate has: {', '.join(ENGINES)}")
        if not isinstance(table, dict):
            raise ConfigError(f"[engines.{name}] must be a table of options")
        try:
            options[name] = ENGINES[name].check_options(table)
        except OptionError as exc:
            raise ConfigError(str(exc)) from exc
    return set(enabled), options


def _decimal(value: object, where: str) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(f"{where}: {value!r} is not a number") from exc


def _models(raw: list[dict[str, Any]]) -> list[ModelSpec]:
    out = []
    for i, m in enumerate(raw):
        where = f"models[{i}]"
        try:
            spec = ModelSpec(
                name=str(m["name"]), family=str(m.get("family", m["name"])),
                params_b=float(m["params_b"]), context_length=int(m["context_length"]),
                dtype=str(m.get("dtype", "bfloat16")), num_layers=int(m["num_layers"]),
                num_kv_heads=int(m["num_kv_heads"]), head_dim=int(m["head_dim"]),
                engines=tuple(m.get("engines", ["vllm"])), source=str(m.get("source", "hub")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}; a model needs name, params_b, context_length, "
                              "num_layers, num_kv_heads, head_dim") from exc
        if spec.dtype not in DTYPE_BYTES:
            raise ConfigError(f"{where}: dtype must be one of {sorted(DTYPE_BYTES)}")
        out.append(spec)
    return out


def _int(value: object, where: str, minimum: int = 0) -> int:
    try:
        n = int(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a whole number") from exc
    if n < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}, got {n}")
    return n


def _float(value: object, where: str) -> float:
    try:
        x = float(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a number") from exc
    if x <= 0:
        raise ConfigError(f"{where}: must be positive, got {x}")
    return x


def _nodes(raw: list[dict[str, Any]], gpu_types: set[str]) -> list[Node]:
    """Logical nodes from the config: accounted as the GPUs they declare, run by a CPU engine."""
    out: list[Node] = []
    for i, n in enumerate(raw):
        where = f"nodes[{i}]"
        if not isinstance(n, dict) or "name" not in n or "gpu_type" not in n:
            raise ConfigError(f"{where}: a node needs name, gpu_type and gpus")
        if n["gpu_type"] not in gpu_types:
            raise ConfigError(f"{where}: gpu_type {n['gpu_type']!r} is not a catalog GPU type; "
                              f"use one of {', '.join(sorted(gpu_types))}")
        engine = str(n.get("engine", "transformers"))
        if engine not in ENGINES:
            raise ConfigError(f"{where}: engine must be one of {', '.join(ENGINES)}")
        if any(o.name == n["name"] for o in out):
            raise ConfigError(f"{where}: node name {n['name']!r} is used twice")
        out.append(Node(str(n["name"]), str(n["gpu_type"]), _int(n.get("gpus", 1), f"{where}.gpus", 1),
                        declared=True, engine=engine))
    return out


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {}
    if cfg := env.get("DEDICATE_CONFIG"):
        path = Path(cfg)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"DEDICATE_CONFIG names {path}, which does not exist") from exc
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"DEDICATE_CONFIG names {path}, which cannot be read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    server = raw.get("server", {})
    data_dir = Path(env.get("DEDICATE_DATA_DIR") or server.get("data_dir")
                    or Path.home() / ".local/share/dedicate").expanduser().resolve()
    cpu = raw.get("cpu", {})
    cpu_slots = _int(cpu.get("slots", os.cpu_count() or 1), "cpu.slots")
    # A slot gets at least 2 GB by default so the demo model always fits one.
    slot_memory = _int(cpu.get("slot_memory_gb", max(2, _memory_gb() // max(cpu_slots, 1))),
                       "cpu.slot_memory_gb", 1)

    hardware: dict[str, Hardware] = {h.id: h for h in default_hardware(slot_memory)}
    hardware["1x_cpu"] = cpu_hardware(
        slot_memory, _decimal(cpu.get("cents_per_minute", DEFAULT_CPU_CENTS_PER_MINUTE), "cpu"),
        str(cpu.get("engine", "transformers")),
    )
    for i, h in enumerate(raw.get("hardware", [])):
        try:
            price = _decimal(h["cents_per_minute"], f"hardware[{i}].cents_per_minute")
        except KeyError as exc:
            raise ConfigError(f"hardware[{i}]: needs {exc}") from exc
        if price < 0:
            raise ConfigError(f"hardware[{i}].cents_per_minute: a price cannot be negative")
        try:
            hw = hardware_from_config(str(h["id"]), price, h.get("engine"), slot_memory)
        except KeyError as exc:
            raise ConfigError(f"hardware[{i}]: needs {exc}") from exc
        except Exception as exc:
            raise ConfigError(f"hardware[{i}]: {exc}") from exc
        hardware[hw.id] = hw

    models = {m.name: m for m in DEFAULT_MODELS}
    models.update({m.name: m for m in _models(raw.get("models", []))})
    declared = _nodes(raw.get("nodes", []), {h.gpu_type for h in hardware.values()})
    enabled, engine_options = _engine_options(raw.get("engines", {}))
    # An engine that needs nothing beyond dedicate (synthetic) runs wherever the config names it.
    named = {h.engine for h in hardware.values()} | {n.engine for n in declared if n.engine}
    engines = installed_engines() | enabled | {e for e in named if e in ENGINES and ENGINES[e].always_available}

    port = _int(env.get("DEDICATE_PORT") or server.get("port", 8700), "DEDICATE_PORT / server.port")
    database_url = env.get("DEDICATE_DATABASE_URL") or server.get("database_url") or \
        f"sqlite:///{data_dir / 'dedicate.db'}"
    timing = raw.get("timing", {})
    return Settings(
        host=env.get("DEDICATE_HOST") or server.get("host", "127.0.0.1"),
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        catalog=Catalog.build(hardware.values(), models.values(), engines),
        cpu_slots=cpu_slots,
        cpu_slot_memory_gb=slot_memory,
        probe_failure_threshold=_int(timing.get("probe_failure_threshold", 3),
                                     "timing.probe_failure_threshold", 1),
        max_failures_before_ready=_int(timing.get("max_failures_before_ready", 3),
                                       "timing.max_failures_before_ready", 1),
        reconcile_interval_s=_float(timing.get("reconcile_interval_s", 1.0), "timing.reconcile_interval_s"),
        extra=raw,
        engine_options=engine_options,
        declared_nodes=tuple(declared),
        gateway=_table("gateway", raw.get("gateway", {}), GatewaySettings,
                       at_least_one=("max_tries", "queue_size", "max_body_bytes", "failures_to_eject"),
                       at_most={"key_cache_ttl_s": (1.0, " second, so a revoked key fails within a second")}),
        autoscaling=_table("autoscaling", raw.get("autoscaling", {}), AutoscalingSettings,
                           positive=("interval_s", "stabilisation_s", "kv_cache_target", "signal_fresh_s"),
                           at_most={"kv_cache_target": (1.0, " (a share of the KV cache)")}),
    )
