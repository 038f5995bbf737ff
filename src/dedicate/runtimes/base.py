"""The runtime protocol: where replica processes run.

A runtime starts a command for a replica, tells whether it still runs,
stops it, and lists the replicas it finds running (so a restarted control
plane adopts them instead of starting duplicates), and may ask its cluster
for more nodes when replicas wait for hardware. It owns replica
addressing: it says where an engine must bind (``binding``) and where a
launched replica can be reached (``address_of``); nothing else in dedicate
assumes a host. It knows nothing about endpoints, models or engines: the
control plane hands it an argv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dedicate.domain.records import Address


@dataclass(frozen=True)
class Node:
    """A machine replicas can run on: its slot type and how many slots it has."""

    name: str
    gpu_type: str  # a catalog gpu_type ("h100-80gb") or "cpu"
    slots: int
    declared: bool = False  # a logical node from the config, not discovered hardware
    engine: str | None = None  # the engine its replicas run, overriding the hardware shape's
    region: str | None = None  # the region (availability zone) it is in, where the runtime knows it


@dataclass(frozen=True)
class LaunchSpec:
    replica_id: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    node: str
    slots: Sequence[int] = field(default_factory=tuple)


@dataclass(frozen=True)
class Binding:
    """Where a replica's engine binds, and the file it writes its port to."""

    host: str
    port_file: Path


@dataclass(frozen=True)
class Handle:
    """Enough to find a process again after a restart: pid plus its start time."""

    pid: int
    started: str


@dataclass(frozen=True)
class ProcessState:
    running: bool
    exit_code: int | None = None
    detail: str | None = None  # why it ended, in words, where the runtime knows (a remote log's tail)
    unplaced: bool = False  # it never ran: the runtime could not place it, and it is to be queued again


@dataclass(frozen=True)
class Demand:
    """Replicas of one shape that no node can take now: what a runtime may ask its cluster for."""

    gpu_type: str
    gpus: int
    replicas: int


class Runtime(Protocol):
    instance: str

    def nodes(self) -> tuple[Node, ...]:
        """The nodes now: the same tuple while they do not change, so what is derived from them keeps."""
        ...

    def launch(self, spec: LaunchSpec) -> Handle: ...

    def poll(self, handle: Handle) -> ProcessState: ...

    def stop(self, handle: Handle, grace_s: float) -> int | None: ...

    def running(self) -> dict[str, Handle]:
        """Replica id → handle of every replica process of this instance found running."""
        ...

    def binding(self, replica_id: str, node: str) -> Binding:
        """Where the engine of ``replica_id``, placed on ``node``, is to listen."""
        ...

    def address_of(self, replica_id: str) -> Address | None:
        """Where the replica can be reached, once its engine listens; None before."""
        ...

    def close(self) -> None:
        """Let go of what the runtime holds open (a cluster connection); replicas are not touched."""
        ...

    def ask_for(self, demand: Sequence[Demand]) -> bool:
        """Ask the cluster for nodes for ``demand`` (all of it: a standing request, replacing the last).

        Answers whether the cluster now has been asked for it (so that it may add nodes); a
        runtime whose machines are fixed asks nothing and answers False.
        """
        ...
