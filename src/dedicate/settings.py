"""Settings: the TOML file named by DEDICATE_CONFIG, overridden by environment variables.

    DEDICATE_CONFIG        path of the TOML file (optional)
    DEDICATE_HOST          bind address (default 127.0.0.1)
    DEDICATE_PORT          port (default 8700; 0 picks a free one, written to <data dir>/port)
    DEDICATE_DATA_DIR      data directory (default ~/.local/share/dedicate)
    DEDICATE_DATABASE_URL  SQLAlchemy URL (default SQLite in the data directory)

Every table of the file is a typed model below (``ConfigFile`` and the tables it holds) that refuses
keys it does not know: a typo stops the server at start-up with the file, the table and the key,
instead of being ignored. ``[engines.<name>]`` options are checked by the engine registry.

``locate`` answers where the server is and keeps its data; ``dedicate up`` and the CLI's client
commands both ask it, so they agree on the data directory, the config file and the address.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from dedicate.domain.catalog import (
    DEFAULT_CPU_CENTS_PER_MINUTE,
    DEFAULT_MODELS,
    Catalog,
    cpu_hardware,
    default_hardware,
    hardware_from_config,
)
from dedicate.domain.errors import InvalidRequest
from dedicate.domain.hardware import Hardware
from dedicate.domain.models import DTYPE_BYTES, ModelSpec
from dedicate.domain.projects import valid_organization_name
from dedicate.engines.registry import ENGINES, OptionError, installed_engines
from dedicate.runtimes.base import Node

# Kubernetes' readiness probes default to every 10 s too: at 10,000 replicas a probe of each
# every pass would be 10,000 requests a second, and would make a pass as long as its probes.
DEFAULT_PROBE_INTERVAL_S = 10.0


class ConfigError(Exception):
    """The config file is wrong; the message says where and how to fix it."""


# values: each kind checked one way, with one message, in every table --------------------------


def _refuse(message: str) -> PydanticCustomError:
    return PydanticCustomError("config", "{message}", {"message": message})


def _whole(minimum: int = 0, maximum: int | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        try:
            if isinstance(value, bool):
                raise ValueError
            n = int(str(value))
        except ValueError:
            raise _refuse(f"{value!r} is not a whole number") from None
        if n < minimum:
            raise _refuse(f"must be at least {minimum}, got {n}")
        if maximum is not None and n > maximum:
            raise _refuse(f"must be at most {maximum}, got {n}")
        return n
    return check


def _number(*, positive: bool = False, at_most: float | None = None, why: str = "") -> Callable[[object], float]:
    """A number at least 0 (above 0 when ``positive``), capped by ``at_most`` for the reason ``why``."""
    def check(value: object) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            x = float(str(value))
        except ValueError:
            raise _refuse(f"{value!r} is not a number") from None
        if positive and not x > 0:
            raise _refuse(f"must be positive, got {x}")
        if not x >= 0:
            raise _refuse(f"must not be negative, got {x}")
        if at_most is not None and x > at_most:
            raise _refuse(f"at most {at_most:g}{why}, got {x:g}")
        return x
    return check


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise _refuse("must be true or false")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _refuse(f"must be a string, got {value!r}")
    return value


def _price(value: object) -> Decimal:
    """Cents per minute, kept exact: ``"4.125"`` stays 4.125 (TOML floats go through their shortest text)."""
    try:
        if isinstance(value, bool):
            raise InvalidOperation
        price = Decimal(str(value))
    except InvalidOperation:
        raise _refuse(f"{value!r} is not a number") from None
    if not price.is_finite():
        raise _refuse(f"{value!r} is not a number")
    if price < 0:
        raise _refuse("a price cannot be negative")
    return price


def _organization(value: object) -> str:
    if not isinstance(value, str) or not valid_organization_name(value):
        raise _refuse(f"{value!r} is not an organization name: lowercase letters, digits, '_' and '-', "
                      "at most 63, starting with a letter or digit")
    return value


Count = Annotated[int, BeforeValidator(_whole(0))]
AtLeastOne = Annotated[int, BeforeValidator(_whole(1))]
Seconds = Annotated[float, BeforeValidator(_number())]
PositiveNumber = Annotated[float, BeforeValidator(_number(positive=True))]
Flag = Annotated[bool, BeforeValidator(_flag)]
Text = Annotated[str, BeforeValidator(_text)]
OptionalText = Annotated[str | None, BeforeValidator(_text)]  # absent: None (TOML has no null)
Price = Annotated[Decimal, BeforeValidator(_price)]


class _Table(BaseModel):
    """One table of the config file: typed, frozen, and no key it does not declare."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# the tables -----------------------------------------------------------------------------------


class ServerTable(_Table):
    """``[server]``; the environment variables win over it."""

    host: Text = "127.0.0.1"
    port: Annotated[int, BeforeValidator(_whole(0, 65535))] = 8700
    data_dir: OptionalText = None  # a relative path is taken from the config file's directory
    database_url: OptionalText = None
    availability_zones: Annotated[tuple[Text, ...], Field(min_length=1)] = ("local",)
    # The installation as Together's v2 clients see it: the one organization of every project.
    organization: Annotated[str, BeforeValidator(_organization)] = "dedicate"
    # The most one upload of model weights may hold (all its files together).
    max_upload_bytes: Annotated[int, BeforeValidator(_whole(1))] = 64 << 30


class CpuTable(_Table):
    """``[cpu]``: the 1x_cpu shape, one slot of this machine."""

    slots: Annotated[int | None, BeforeValidator(_whole(0))] = None  # default: the number of CPUs
    slot_memory_gb: Annotated[int | None, BeforeValidator(_whole(1))] = None  # default: RAM / slots, at least 2
    cents_per_minute: Price = DEFAULT_CPU_CENTS_PER_MINUTE
    engine: Text = "transformers"


class TimingTable(_Table):
    """``[timing]``: the reconcile loop."""

    probe_failure_threshold: AtLeastOne = 3
    max_failures_before_ready: AtLeastOne = 3
    reconcile_interval_s: PositiveNumber = 1.0
    # A ready replica that passed its last probe is probed again this often (0: every pass); one
    # that is starting or failing, every pass. Each replica's probes are spread by its id.
    probe_interval_s: Seconds = DEFAULT_PROBE_INTERVAL_S


class GpuSettings(_Table):
    """``[gpu]``: with no ``[[nodes]]``, ask NVML for this machine's GPUs unless ``discover = false``."""

    discover: Flag = True


class HardwareEntry(_Table):
    """One ``[[hardware]]``: a shape added or repriced; its specs come from its id."""

    id: Text
    cents_per_minute: Price
    engine: OptionalText = None  # default: vllm for GPU ids, transformers for "Nx_cpu"


class ModelEntry(_Table):
    """One ``[[models]]``: a deployable model."""

    name: Text
    params_b: PositiveNumber
    context_length: AtLeastOne
    num_layers: AtLeastOne
    num_kv_heads: AtLeastOne
    head_dim: AtLeastOne
    dtype: Text = "bfloat16"
    engines: tuple[Text, ...] = ("vllm",)
    source: Text = "hub"
    family: OptionalText = None  # default: the name


class NodeEntry(_Table):
    """One ``[[nodes]]``: a logical node, accounted as the GPUs it declares, run by a CPU engine."""

    name: Text
    gpu_type: Text
    gpus: AtLeastOne = 1
    engine: Text = "transformers"


class RuntimeSettings(_Table):
    """``[runtime]``: where replicas run (docs/ray.md). ``local``: child processes of this server."""

    kind: Literal["local", "ray"] = "local"
    address: OptionalText = None  # ray: the cluster's GCS address, "<head>:6379"; dedicate is a driver
    namespace: Text = "dedicate"  # ray: this installation's actors; every server of one installation shares it
    node_ip_address: OptionalText = None  # ray: this driver's own address, where Ray would guess wrong
    placement_timeout_s: PositiveNumber = 60.0  # ray: a placement Ray cannot satisfy is given up after this
    refresh_s: PositiveNumber = 2.0  # ray: how often the node table is read
    request_resources: Flag = True  # ray: ask the cluster's autoscaler for the shapes that wait
    port_dir: Text = "/tmp/dedicate-ray"  # ray: on each node, where an engine writes its port
    node_labels: dict[str, str] = Field(default_factory=dict)  # ray: only nodes with these labels are dedicate's


class GatewaySettings(_Table):
    """The ``[gateway]`` table: limits and timeouts of the OpenAI-compatible gateway (docs/gateway.md)."""

    hold_s: Seconds = 30.0  # how long a request waits for a ready replica
    queue_size: AtLeastOne = 256  # requests waiting per endpoint, beyond which 429
    retry_after_s: Seconds = 5.0  # Retry-After on "no ready replica" and "queue full"
    try_timeout_s: Seconds = 120.0  # per try, until the replica's response headers
    idle_timeout_s: Seconds = 600.0  # silence allowed inside an answer
    connect_timeout_s: Seconds = 2.0
    max_tries: AtLeastOne = 3
    max_body_bytes: AtLeastOne = 4 << 20
    body_timeout_s: Seconds = 30.0  # the whole request body must arrive within this, or 408
    max_tokens: Count = 131072  # cap on max_tokens / max_completion_tokens; 0: none
    inject_usage: Flag = True  # ask streams for usage, and drop that chunk from what the client sees
    key_rps: Seconds = 0.0  # 0: no limit
    key_burst: Count = 0
    key_concurrency: Count = 0
    owner_rps: Seconds = 0.0
    owner_burst: Count = 0
    owner_concurrency: Count = 0
    failures_to_eject: AtLeastOne = 3
    ejection_base_s: Seconds = 1.0
    ejection_max_s: Seconds = 30.0
    key_cache_ttl_s: Annotated[float, BeforeValidator(
        _number(at_most=1.0, why=" second, so a revoked key fails within a second"))] = 1.0
    table_ttl_s: Seconds = 0.5
    signals_interval_s: Seconds = 2.0


class AutoscalingSettings(_Table):
    """The ``[autoscaling]`` table (docs/autoscaling.md)."""

    interval_s: PositiveNumber = 2.0  # one pass
    stabilisation_s: PositiveNumber = 300.0  # scale-down stabilisation window
    kv_cache_target: Annotated[float, BeforeValidator(
        _number(positive=True, at_most=1.0, why=" (a share of the KV cache)"))] = 0.8
    signal_fresh_s: PositiveNumber = 15.0  # gateway signal rows older than this are ignored
    scrape_engines: Flag = True  # read the engines' /metrics for queue and KV-cache figures

    @property
    def bucket_s(self) -> float:
        return min(10.0, self.stabilisation_s / 30)


class ConfigFile(_Table):
    """The whole file: these tables and no others."""

    server: ServerTable = ServerTable()
    cpu: CpuTable = CpuTable()
    timing: TimingTable = TimingTable()
    gpu: GpuSettings = GpuSettings()
    hardware: tuple[HardwareEntry, ...] = ()
    models: tuple[ModelEntry, ...] = ()
    nodes: tuple[NodeEntry, ...] = ()
    engines: dict[str, Any] = Field(default_factory=dict)  # checked by the engine registry (_engine_options)
    gateway: GatewaySettings = GatewaySettings()
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    runtime: RuntimeSettings = RuntimeSettings()


_TABLES: dict[str, type[_Table]] = {"server": ServerTable, "cpu": CpuTable, "timing": TimingTable,
                                    "gpu": GpuSettings, "hardware": HardwareEntry, "models": ModelEntry,
                                    "nodes": NodeEntry, "gateway": GatewaySettings,
                                    "autoscaling": AutoscalingSettings, "runtime": RuntimeSettings}
_ARRAYS = {"hardware", "models", "nodes"}


# messages -------------------------------------------------------------------------------------


def _where(loc: tuple[int | str, ...]) -> str:
    """``("hardware", 0, "cents_per_minute")`` → ``hardware[0].cents_per_minute``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _label(parent: tuple[int | str, ...]) -> str:
    """How a message names a table: ``[server]``, ``hardware[0]``."""
    return f"[{parent[0]}]" if len(parent) == 1 else _where(parent)


def _unknown(parent: tuple[int | str, ...], keys: list[str]) -> str:
    cls = _TABLES[str(parent[0])] if parent else ConfigFile
    known = sorted(cls.model_fields)
    hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, known, 1)) else repr(k)
             for k in keys]
    if not parent:
        return (f"unknown table {', '.join(hints)}; "
                f"the config file has: {', '.join(f'[[{k}]]' if k in _ARRAYS else f'[{k}]' for k in known)}")
    plural = "s" if len(keys) > 1 else ""
    return f"{_label(parent)} unknown setting{plural} {', '.join(hints)}; known: {', '.join(known)}"


def _missing(parent: tuple[int | str, ...], keys: list[str]) -> str:
    cls = _TABLES[str(parent[0])]
    required = [name for name, f in cls.model_fields.items() if f.is_required()]
    return (f"{_where(parent)}: needs {', '.join(map(repr, keys))}; "
            f"every [[{parent[0]}]] entry needs {', '.join(required)}")


def _message(loc: tuple[int | str, ...], kind: str, msg: str) -> str:
    where = _where(loc)
    if kind == "config":
        return f"{where}: {msg}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"[{where}] must be a table" if len(loc) == 1 else f"{where}: must be a table"
    if kind in ("list_type", "tuple_type"):
        if len(loc) == 1 and loc[0] in _ARRAYS:
            return f"{where}: must be an array of tables, written [[{where}]]"
        return f"{where}: must be a list"
    if kind == "too_short":
        return f"{where}: must not be empty"
    return f"{where}: {msg}"


def _explain(exc: ValidationError, origin: Path) -> ConfigError:
    """Pydantic's errors as one line each, naming the file, the table and the key."""
    groups: dict[tuple[str, tuple[int | str, ...]], list[str]] = {}
    lines: list[str | tuple[str, tuple[int | str, ...]]] = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), err["type"]
        if kind in ("extra_forbidden", "missing"):  # one line per table: its unknown keys, its missing ones
            key = (kind, loc[:-1])
            if key not in groups:
                groups[key] = []
                lines.append(key)
            groups[key].append(str(loc[-1]))
        else:
            lines.append(_message(loc, kind, err["msg"]))
    text = [line if isinstance(line, str) else
            (_unknown if line[0] == "extra_forbidden" else _missing)(line[1], groups[line]) for line in lines]
    return ConfigError("\n".join(f"{origin}: {line}" for line in text))


# the file -------------------------------------------------------------------------------------


def _read_file(env: Mapping[str, str]) -> tuple[Path | None, ConfigFile]:
    """The file named by DEDICATE_CONFIG, checked table by table (no file: every default)."""
    if not (cfg := env.get("DEDICATE_CONFIG")):
        return None, ConfigFile()
    path = Path(cfg).expanduser()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"DEDICATE_CONFIG names {path}, which does not exist") from exc
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"DEDICATE_CONFIG names {path}, which cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return path, ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, path) from None


@dataclass(frozen=True)
class Location:
    """Where the server keeps its data and listens, and which config file said so."""

    config_path: Path | None
    data_dir: Path
    host: str
    port: int

    def client_url(self) -> str:
        """How a client on this machine reaches the server.

        The port the running server wrote to ``<data dir>/port`` wins (it picked it when ``port`` is 0);
        a wildcard bind address is dialled on the loopback.
        """
        port = str(self.port)
        try:
            written = (self.data_dir / "port").read_text().strip()
        except OSError:
            written = ""
        if written.isdigit():
            port = written
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _env_port(value: str) -> int:
    try:
        return _whole(0, 65535)(value)
    except PydanticCustomError as exc:
        raise ConfigError(f"DEDICATE_PORT: {exc.message()}") from None


def _locate(env: Mapping[str, str], path: Path | None, server: ServerTable) -> Location:
    if from_env := env.get("DEDICATE_DATA_DIR"):
        data_dir = Path(from_env).expanduser()
    elif server.data_dir:
        data_dir = Path(server.data_dir).expanduser()
        if path is not None and not data_dir.is_absolute():
            data_dir = path.parent / data_dir
    else:
        data_dir = Path.home() / ".local/share/dedicate"
    port = _env_port(env["DEDICATE_PORT"]) if env.get("DEDICATE_PORT") else server.port
    return Location(path, data_dir.resolve(), env.get("DEDICATE_HOST") or server.host, port)


def locate(env: Mapping[str, str] | None = None) -> Location:
    """The data directory, address and config file, as ``dedicate up`` resolves them."""
    env = os.environ if env is None else env
    path, file = _read_file(env)
    return _locate(env, path, file.server)


# from the file to the settings ----------------------------------------------------------------


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
    reconcile_interval_s: float = 1.0
    probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S  # of replicas ready and passing; 0: every pass
    engine_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # [engines.<name>], checked
    declared_nodes: tuple[Node, ...] = ()
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    availability_zones: tuple[str, ...] = ("local",)
    organization: str = "dedicate"
    max_upload_bytes: int = 64 << 30
    config_path: Path | None = None
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

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


def _engine_options(raw: Mapping[str, Any]) -> tuple[set[str], dict[str, dict[str, object]]]:
    """The ``[engines]`` table: ``enabled`` engine names and one options table per engine, checked now.

    A bad option fails at start-up with its name, not after a replica crashed on it three times.
    """
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


def _model(i: int, m: ModelEntry) -> ModelSpec:
    if m.dtype not in DTYPE_BYTES:
        raise ConfigError(f"models[{i}]: dtype must be one of {sorted(DTYPE_BYTES)}")
    return ModelSpec(name=m.name, family=m.family or m.name, params_b=m.params_b, context_length=m.context_length,
                     dtype=m.dtype, num_layers=m.num_layers, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
                     engines=m.engines, source=m.source)


def _nodes(entries: tuple[NodeEntry, ...], gpu_types: set[str]) -> list[Node]:
    """Logical nodes from the config: accounted as the GPUs they declare, run by a CPU engine."""
    out: list[Node] = []
    for i, n in enumerate(entries):
        where = f"nodes[{i}]"
        if n.gpu_type not in gpu_types:
            raise ConfigError(f"{where}: gpu_type {n.gpu_type!r} is not a catalog GPU type; "
                              f"use one of {', '.join(sorted(gpu_types))}")
        if n.engine not in ENGINES:
            raise ConfigError(f"{where}: engine must be one of {', '.join(ENGINES)}")
        if any(o.name == n.name for o in out):
            raise ConfigError(f"{where}: node name {n.name!r} is used twice")
        out.append(Node(n.name, n.gpu_type, n.gpus, declared=True, engine=n.engine))
    return out


def _runtime(r: RuntimeSettings, declared: list[Node]) -> RuntimeSettings:
    if r.kind == "ray":
        if not r.address:
            raise ConfigError('[runtime]: kind = "ray" needs address = "<head>:6379", the Ray cluster\'s GCS address')
        if r.address.startswith("ray://"):
            raise ConfigError("[runtime]: address must be the GCS address (\"<head>:6379\"): dedicate connects "
                              "as a driver, not through Ray Client (ray://)")
        if declared:
            raise ConfigError('[runtime]: kind = "ray" takes its nodes from the cluster; '
                              "remove the [[nodes]] entries (label Ray nodes instead: docs/ray.md)")
    return r


def _settings(env: Mapping[str, str], place: Location, file: ConfigFile) -> Settings:
    cpu = file.cpu
    cpu_slots = (os.cpu_count() or 1) if cpu.slots is None else cpu.slots
    # A slot gets at least 2 GB by default so the demo model always fits one.
    slot_memory = cpu.slot_memory_gb or max(2, _memory_gb() // max(cpu_slots, 1))

    hardware: dict[str, Hardware] = {h.id: h for h in default_hardware(slot_memory)}
    hardware["1x_cpu"] = cpu_hardware(slot_memory, cpu.cents_per_minute, cpu.engine)
    for i, h in enumerate(file.hardware):
        try:
            hw = hardware_from_config(h.id, h.cents_per_minute, h.engine, slot_memory)
        except (InvalidRequest, ValueError, KeyError) as exc:
            raise ConfigError(f"hardware[{i}]: {exc}") from exc
        hardware[hw.id] = hw

    models = {m.name: m for m in DEFAULT_MODELS}
    models.update({m.name: m for m in (_model(i, m) for i, m in enumerate(file.models))})
    declared = _nodes(file.nodes, {h.gpu_type for h in hardware.values()})
    enabled, engine_options = _engine_options(file.engines)
    # An engine that needs nothing beyond dedicate (synthetic) runs wherever the config names it.
    named = {h.engine for h in hardware.values()} | {n.engine for n in declared if n.engine}
    engines = installed_engines() | enabled | {e for e in named if e in ENGINES and ENGINES[e].always_available}

    database_url = env.get("DEDICATE_DATABASE_URL") or file.server.database_url or \
        f"sqlite:///{place.data_dir / 'dedicate.db'}"
    return Settings(
        host=place.host,
        port=place.port,
        data_dir=place.data_dir,
        database_url=database_url,
        catalog=Catalog.build(hardware.values(), models.values(), engines),
        cpu_slots=cpu_slots,
        cpu_slot_memory_gb=slot_memory,
        probe_failure_threshold=file.timing.probe_failure_threshold,
        max_failures_before_ready=file.timing.max_failures_before_ready,
        reconcile_interval_s=file.timing.reconcile_interval_s,
        probe_interval_s=file.timing.probe_interval_s,
        engine_options=engine_options,
        declared_nodes=tuple(declared),
        gateway=file.gateway,
        autoscaling=file.autoscaling,
        gpu=file.gpu,
        availability_zones=file.server.availability_zones,
        organization=file.server.organization,
        max_upload_bytes=file.server.max_upload_bytes,
        config_path=place.config_path,
        runtime=_runtime(file.runtime, declared),
    )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``dedicate up``; a ``ConfigError`` names the file, the table and the key."""
    env = dict(os.environ if env is None else env)
    path, file = _read_file(env)
    place = _locate(env, path, file.server)
    try:
        return _settings(env, place, file)
    except ConfigError as exc:  # everything past _locate comes from the file
        if path is None:
            raise
        raise ConfigError(f"{path}: {exc}") from exc
