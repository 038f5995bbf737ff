"""A runtime that runs nothing: for unit tests of the control plane."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dedicate.domain.records import Address
from dedicate.runtimes.base import Binding, Demand, Handle, LaunchSpec, Node, ProcessState


@dataclass
class FakeProcess:
    spec: LaunchSpec
    running: bool = True
    exit_code: int | None = None
    port: int | None = None


@dataclass
class FakeRuntime:
    node_list: list[Node]
    instance: str = "fake"
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    next_pid: int = 1000
    next_port: int = 20000
    fail_launch: bool = False
    host: str = "127.0.0.1"  # where its pretend replicas are reached
    asks: list[tuple[Demand, ...]] = field(default_factory=list)  # what ask_for was told, each time it changed
    unplaced: dict[int, str] = field(default_factory=dict)  # pid → why it could not be placed
    _handed_out: tuple[Node, ...] | None = field(default=None, repr=False, compare=False)

    def nodes(self) -> tuple[Node, ...]:
        # node_list is the tests' to change; the tuple is made anew only when it has changed
        if self._handed_out is None or list(self._handed_out) != self.node_list:
            self._handed_out = tuple(self.node_list)
        return self._handed_out

    def launch(self, spec: LaunchSpec) -> Handle:
        if self.fail_launch:
            raise OSError("fake launch failure")
        self.next_pid += 1
        self.next_port += 1
        self.processes[self.next_pid] = FakeProcess(spec, port=self.next_port)
        return Handle(self.next_pid, "0")

    def poll(self, handle: Handle) -> ProcessState:
        if handle.pid in self.unplaced:
            return ProcessState(False, None, detail=self.unplaced[handle.pid], unplaced=True)
        p = self.processes.get(handle.pid)
        if p is None:
            return ProcessState(False, None)
        return ProcessState(p.running, p.exit_code)

    def stop(self, handle: Handle, grace_s: float) -> int | None:
        p = self.processes.get(handle.pid)
        if p is None:
            return None
        if p.running:
            p.running, p.exit_code = False, 0
        return p.exit_code

    def running(self) -> dict[str, Handle]:
        return {p.spec.replica_id: Handle(pid, "0") for pid, p in self.processes.items() if p.running}

    def binding(self, replica_id: str, node: str) -> Binding:
        return Binding(self.host, Path("fake") / replica_id / "port")

    def address_of(self, replica_id: str) -> Address | None:
        for p in self.processes.values():
            if p.spec.replica_id == replica_id and p.port is not None:
                return Address(self.host, p.port)
        return None

    def crash(self, replica_id: str, code: int = 1) -> None:
        for p in self.processes.values():
            if p.spec.replica_id == replica_id and p.running:
                p.running, p.exit_code = False, code

    def unplace(self, replica_id: str, why: str = "could not be placed") -> None:
        """The runtime gives up placing the replica, as Ray does after its placement timeout."""
        for pid, p in self.processes.items():
            if p.spec.replica_id == replica_id and p.running:
                p.running = False
                self.unplaced[pid] = why

    def close(self) -> None:
        pass

    def ask_for(self, demand: Sequence[Demand]) -> bool:
        if (self.asks[-1] if self.asks else ()) != tuple(demand):
            self.asks.append(tuple(demand))
        return bool(demand)
