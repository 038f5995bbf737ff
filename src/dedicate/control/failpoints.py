"""Named failpoints: make the process die at a chosen point, for crash drills.

``DEDICATE_FAILPOINTS=after_replica_row,after_stop_request`` makes the server
exit at once (status 97, no cleanup, like a crash) the first time it passes
one of those points. The names:

- ``after_replica_row``: a replica row was written, its process not launched;
- ``after_launch``: its process was launched, the launch not recorded;
- ``after_first_probe``: its first good probe was recorded;
- ``after_stop_request``: a replica was asked to stop, not yet stopped.
"""

from __future__ import annotations

import os

POINTS = ("after_replica_row", "after_launch", "after_first_probe", "after_stop_request")
EXIT_CODE = 97


def hit(name: str) -> None:
    armed = os.environ.get("DEDICATE_FAILPOINTS", "")
    if armed and name in armed.split(","):
        os._exit(EXIT_CODE)
