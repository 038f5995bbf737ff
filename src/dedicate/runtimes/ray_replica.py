"""The Ray actor of one replica: it runs on the node Ray placed it on and holds the engine there.

The actor starts the engine as its child process, bound to the node's own
address, with ``CUDA_VISIBLE_DEVICES`` naming the GPUs Ray gave the actor, and
the engine's log on the node. It watches the child: when the engine exits on
its own, the actor writes the exit code and the log's last lines to Ray's
key-value store (so the control plane can say why, from any machine) and
then ends itself, so a dead engine is never a live replica. A stop asked by
the control plane ends the engine (SIGTERM to its process group, SIGKILL
after the grace) and answers the exit code.

The engine dies with the actor: it is started with ``PR_SET_PDEATHSIG``, so a
worker that Ray kills (a node lost, a placement group removed) leaves no
engine behind answering on its port.

This module is imported by Ray's worker processes; it imports nothing of
dedicate beyond the port file.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dedicate.runtimes.logtail import log_tail
from dedicate.runtimes.portfile import read_port

PR_SET_PDEATHSIG = 1
KV_NAMESPACE = "dedicate"


def exit_key(namespace: str, replica_id: str) -> bytes:
    """Where a replica's actor leaves its engine's exit for the control plane."""
    return f"{namespace}/exit/{replica_id}".encode()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _writable_log(path: Path, replica_id: str) -> Path:
    """The log path the control plane named, or one in this node's temp dir where that is not writable."""
    for candidate in (path, Path(tempfile.gettempdir()) / "dedicate-ray" / replica_id / "engine.log"):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            with open(candidate, "ab"):
                return candidate
        except OSError:
            continue
    raise OSError(f"no writable place for the log of replica {replica_id}")


class ReplicaActor:
    """One replica's engine on this node (a Ray actor class; ``ray.remote`` is applied by the runtime)."""

    def __init__(self, replica_id: str, namespace: str, argv: Sequence[str], env: Mapping[str, str],
                 log_path: str, port_file: str) -> None:
        import ray

        self.replica_id = replica_id
        self.namespace = namespace
        self.port_file = Path(port_file)
        self.port_file.parent.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        self.log_path = _writable_log(Path(log_path), replica_id)
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self.node_id = ray.get_runtime_context().get_node_id()
        child_env = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": ",".join(self.gpu_ids)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                start_new_session=True, close_fds=True, preexec_fn=_die_with_parent)
        self._stopping = threading.Event()
        threading.Thread(target=self._watch, name=f"watch-{replica_id}", daemon=True).start()

    def _watch(self) -> None:
        code = self.proc.wait()
        if self._stopping.is_set():
            return
        from ray.experimental.internal_kv import _internal_kv_put

        record = json.dumps({"code": code, "detail": log_tail(self.log_path)})
        with contextlib.suppress(Exception):
            _internal_kv_put(exit_key(self.namespace, self.replica_id), record.encode(), overwrite=True,
                             namespace=KV_NAMESPACE)
        os._exit(1)  # the engine is gone: so is its replica

    def info(self) -> dict[str, Any]:
        """Where the engine runs and, once it listens, its port."""
        return {"pid": self.proc.pid, "node_id": self.node_id, "gpu_ids": self.gpu_ids,
                "port": read_port(self.port_file), "log_path": str(self.log_path)}

    def tail(self, lines: int = 5) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, grace_s: float) -> int | None:
        """End the engine: SIGTERM to its process group, SIGKILL after ``grace_s``; its exit code."""
        self._stopping.set()
        if self.proc.poll() is not None:
            return self.proc.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self.proc.returncode
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
