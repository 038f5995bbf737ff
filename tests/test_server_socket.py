"""The server's listening socket: answers leave at once, not after the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket

from dedicate.server import bind


def test_connections_accepted_on_the_servers_socket_send_without_waiting_nagle() -> None:
    """asyncio sets TCP_NODELAY only on a socket made as TCP: one made with proto 0 kept Nagle's
    algorithm, and every answer written in two parts waited 40 ms for the client's ACK."""
    async def run() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = bind("127.0.0.1", 0)
        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
            nodelay = await asyncio.wait_for(accepted, 10)
            writer.close()
        return nodelay

    assert asyncio.run(run()) != 0, "TCP_NODELAY is set on the accepted connection"


def test_a_new_admin_key_is_shown_at_a_terminal_and_only_located_in_a_log() -> None:
    from pathlib import Path

    from dedicate.server import admin_key_notice

    at_terminal = admin_key_notice("ddc_secret", Path("/data/admin.key"), to_terminal=True)
    in_a_log = admin_key_notice("ddc_secret", Path("/data/admin.key"), to_terminal=False)
    assert "ddc_secret" in at_terminal and "/data/admin.key" in at_terminal
    assert "ddc_secret" not in in_a_log and "/data/admin.key" in in_a_log
