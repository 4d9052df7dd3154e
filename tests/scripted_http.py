"""A scripted HTTP/1.1 server handler for the client connection tests (test_http_connection.py,
test_async_http_connections.py): each request on a connection is answered by `reply`."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

# (request body, the request's number on its connection from 1) -> (what to write back, how to end the connection
# after it: "" keep it, "close" a FIN, "reset" an RST)
Reply = Callable[[bytes, int], tuple[bytes, str]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def echo(body: bytes, _: int) -> tuple[bytes, str]:
    return ok(b"echo " + body), ""


def scripted_handler(reply: Reply, carried: list[int], trickle_s: float = 0.0) -> Handler:
    """An asyncio.start_server handler answering with `reply` (`trickle_s` between the answer's bytes); `carried`
    gets how many requests each connection carried."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        carried.append(0)
        me = len(carried) - 1
        end = ""
        try:
            while not end:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                carried[me] += 1
                answer, end = reply(body, carried[me])
                if trickle_s:
                    for i in range(len(answer)):
                        writer.write(answer[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(trickle_s)
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if end == "reset":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    return handle
