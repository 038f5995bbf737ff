"""The port file: how a local engine process tells its runtime which port it listens on.

An engine started with ``--port 0`` binds a free port and writes its number to
the file named by ``--port-file`` (atomically: a temporary file renamed), and
its runtime reads it. This module is the one place that knows where that file
lies and how it is read.
"""

from __future__ import annotations

from pathlib import Path

PORT_FILE = "port"


def port_file(replica_dir: Path) -> Path:
    return replica_dir / PORT_FILE


def read_port(path: Path) -> int | None:
    """The port written to ``path``, or None while the engine has not written it (or wrote garbage)."""
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None
