"""The replica process both model servers run as: flags, socket, port file, signals, logs.

The runtime starts ``transformers_server`` or ``synthetic`` the same way (see
``engines.registry``) and expects the same of either: the bearer token in
``DEDICATE_REPLICA_TOKEN``, the bound port written to ``--port-file`` once
the server accepts, a graceful drain on SIGTERM and then exit status 0.

It imports only the standard library and uvicorn, so that the synthetic
engine stays quick to start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Final, Protocol

import uvicorn
from starlette.types import ASGIApp

TOKEN_ENV: Final = "DEDICATE_REPLICA_TOKEN"


# ---------------------------------------------------------------------- arguments


def non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def positive_int(value: str) -> int:
    return int_at_least(1)(value)


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """Where to listen, where to announce the port, and the labels the runtime finds us by."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--replica-id", default="", help="label for logs and process lookup")
    parser.add_argument("--instance", default="", help="label for logs and process lookup")


def read_token(log: logging.Logger) -> str:
    """The replica token from the environment (a command line is readable by every user); "" if unset."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        log.error("%s is not set; refusing to serve without authentication", TOKEN_ENV)
    return token


# ------------------------------------------------------------------- socket, port


def bind_socket(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """Bind ourselves so port 0 works and we learn the real port before serving."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def listen(host: str, port: int, log: logging.Logger, *, backlog: int = 128) -> socket.socket | None:
    """``bind_socket``, or None (logged) when the address cannot be had."""
    try:
        return bind_socket(host, port, backlog=backlog)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", host, port, exc)
        return None


def write_port_file(path: Path, port: int) -> None:
    """Write-then-rename, so a reader polling the file never sees a partial number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n")
    os.replace(temporary, path)


# ------------------------------------------------------------------------ serving


class Drainable(Protocol):
    def drain(self, grace_s: float) -> None:
        """Begin shutting down: refuse new work, end running work after ``grace_s``; signal-safe."""


class ReplicaServer(uvicorn.Server):
    """uvicorn, plus telling the engine when a shutdown signal arrives.

    uvicorn alone would wait for streams and then cancel them mid-body after
    its timeout; draining the engine first ends them as well-formed replies.
    """

    def __init__(self, config: uvicorn.Config, engine: Drainable, grace_s: float, log: logging.Logger) -> None:
        super().__init__(config)
        self._engine = engine
        self._grace_s = grace_s
        self._log = log

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self._log.info("%s: shutting down, in-flight requests get %ss", signal.Signals(sig).name, self._grace_s)
        self._engine.drain(self._grace_s)
        super().handle_exit(sig, frame)


def signal_handler(server: uvicorn.Server) -> Callable[[int, FrameType | None], None]:
    """The handler in place outside uvicorn's own (before it starts, after it stops).

    uvicorn re-raises a caught signal once it has shut down; with the default
    handler SIGTERM would then kill us with status -15 instead of exiting 0.
    Before uvicorn is up, the same handler makes an early SIGTERM still count.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        server.handle_exit(signum, frame)

    return handle


def replica_server(app: ASGIApp, engine: Drainable, grace_s: float, log: logging.Logger) -> ReplicaServer:
    """The uvicorn server for one replica, with SIGTERM and SIGINT routed to it."""
    config = uvicorn.Config(
        app,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(grace_s) + 2,  # a backstop behind the engine's own deadline
        lifespan="on",
    )
    server = ReplicaServer(config, engine, grace_s, log)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal_handler(server))
    return server


async def serve(
    server: uvicorn.Server,
    sock: socket.socket,
    port_file: Path | None,
    log: logging.Logger,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Serve until told to stop; announce the port (and call ``on_started``) once uvicorn is accepting."""
    port = int(sock.getsockname()[1])
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.005)
    if server.started:
        log.info("listening on %s:%d", sock.getsockname()[0], port)
        if port_file is not None:
            write_port_file(port_file, port)
        if on_started is not None:
            on_started()
    await serving


# ------------------------------------------------------------------------ logging


class QuietPolling(logging.Filter):
    """Drop access-log lines for successful health and metrics polls.

    The runtime and the metrics scraper poll every few seconds; logging each
    poll would bury the requests worth reading in the replica's log file.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:  # uvicorn: client, method, path, ver, status
            _client, method, path, _version, status = args
            return not (method == "GET" and path in ("/health", "/metrics") and status == 200)
        return True


def configure_logging(replica_id: str, instance: str) -> None:
    """Log to stderr (the runtime keeps it as the replica's log file), labelled with the replica."""
    labels = " ".join(f"{key}={value}" for key, value in (("replica", replica_id), ("instance", instance)) if value)
    prefix = f"[{labels}] " if labels else ""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
    )
    logging.getLogger("uvicorn.access").addFilter(QuietPolling())
