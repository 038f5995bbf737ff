"""The local runtime: replicas are child processes on this machine.

Each replica runs in its own process group (``start_new_session``), logs to
a file in the data directory, and carries ``--replica-id`` and ``--instance``
on its command line. A restarted server finds its replicas by scanning
``/proc`` for that instance id and checks each pid's start time, so a reused
pid is never mistaken for a replica.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from dedicate.domain.records import Address
from dedicate.runtimes.base import Binding, Demand, Handle, LaunchSpec, Node, ProcessState
from dedicate.runtimes.portfile import port_file, read_port

LOOPBACK = "127.0.0.1"  # replicas are children of this machine: they listen on loopback only


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


class LocalRuntime:
    def __init__(self, data_dir: Path, instance: str, nodes: list[Node]) -> None:
        self.data_dir = data_dir
        self.instance = instance
        self._nodes = tuple(nodes)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def nodes(self) -> tuple[Node, ...]:
        return self._nodes

    def replica_dir(self, replica_id: str) -> Path:
        return self.data_dir / "replicas" / replica_id

    def launch(self, spec: LaunchSpec) -> Handle:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env}
        with open(spec.log_path, "ab") as log:
            proc = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        self._children[proc.pid] = proc
        started = process_start_time(proc.pid) or "unknown"
        return Handle(proc.pid, started)

    def poll(self, handle: Handle) -> ProcessState:
        child = self._children.get(handle.pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return ProcessState(True)
            del self._children[handle.pid]
            return ProcessState(False, code)
        started = process_start_time(handle.pid)
        if started is None or started != handle.started:
            return ProcessState(False, None)
        return ProcessState(True)

    def stop(self, handle: Handle, grace_s: float) -> int | None:
        """SIGTERM the replica's process group, SIGKILL it after ``grace_s``."""
        if not self.poll(handle).running:
            return self._reap(handle)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            state = self.poll(handle)
            if not state.running:
                return state.exit_code
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGKILL)
        for _ in range(100):
            state = self.poll(handle)
            if not state.running:
                return state.exit_code if state.exit_code is not None else -signal.SIGKILL
            time.sleep(0.05)
        return None

    def _reap(self, handle: Handle) -> int | None:
        child = self._children.pop(handle.pid, None)
        return None if child is None else child.poll()

    def running(self) -> dict[str, Handle]:
        found: dict[str, Handle] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            argv = _cmdline(int(entry.name))
            if "--instance" not in argv or "--replica-id" not in argv:
                continue
            try:
                instance = argv[argv.index("--instance") + 1]
                replica_id = argv[argv.index("--replica-id") + 1]
            except IndexError:
                continue
            if instance != self.instance:
                continue
            pid = int(entry.name)
            started = process_start_time(pid)
            try:
                leader = os.getpgid(pid)
            except ProcessLookupError:  # it exited between the listing and this look: an outcome, not an error
                continue
            if started is not None and pid == leader:
                found[replica_id] = Handle(pid, started)
        return found

    def binding(self, replica_id: str, node: str) -> Binding:
        return Binding(LOOPBACK, port_file(self.replica_dir(replica_id)))

    def address_of(self, replica_id: str) -> Address | None:
        port = read_port(port_file(self.replica_dir(replica_id)))
        return None if port is None else Address(LOOPBACK, port)

    def close(self) -> None:
        pass

    def ask_for(self, demand: Sequence[Demand]) -> bool:
        return False  # this machine is what it is
