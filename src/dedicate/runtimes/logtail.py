"""The last words of an engine's log: what a failed replica's status message quotes.

One function for every runtime and the control plane, so that a replica that dies on a Ray node
is explained with the same lines as one that dies here. uvicorn's lines on the way out
("Shutting down", "Finished server process", …) say nothing of why, and an engine that gives up
prints its reason just before them: they are left out, so the reason shows.
"""

from __future__ import annotations

import re
from pathlib import Path

TAIL_LINES = 5
TAIL_BYTES = 8192
_LIFECYCLE = re.compile(r"Shutting down|Waiting for (application shutdown|connections to close|background tasks)|"
                        r"Application shutdown complete|Finished server process")


def log_tail(path: str | Path | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` telling lines of the log at ``path``, joined by `` | ``; empty if there is none."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    said = [line.strip() for line in text.strip().splitlines() if not _LIFECYCLE.search(line)]
    return " | ".join(said[-lines:])
