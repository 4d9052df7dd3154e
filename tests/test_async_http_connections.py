"""client/async_http_connections.py: the asyncio connection pool the client library's and the proxy's HTTP calls to
Triton go through, against a scripted asyncio server (the real Triton paths: test_client_library.py's http modes
and the proxy's suites)."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Awaitable, Callable

import pytest
from scripted_http import Reply, echo, ok, scripted_handler

from bge_triton.client.async_http_connections import AsyncHttpConnections
from bge_triton.client.errors import RequestTimeout, ServerUnavailable, from_triton_exception

Run = Callable[[AsyncHttpConnections], Awaitable[None]]


def serve(reply: Reply, run: Run, timeout_s: float = 2.0) -> list[int]:
    """Runs `run` against a server answering each request with `reply`; how many requests each connection carried."""
    carried: list[int] = []

    async def main() -> None:
        server = await asyncio.start_server(scripted_handler(reply, carried), "127.0.0.1", 0)
        pool = AsyncHttpConnections("127.0.0.1", server.sockets[0].getsockname()[1], timeout_s=timeout_s)
        try:
            await run(pool)
        finally:
            pool.close()
            server.close()

    asyncio.run(main())
    return carried


def test_sequential_requests_share_one_kept_alive_connection_and_get_their_own_answers() -> None:
    async def run(pool: AsyncHttpConnections) -> None:
        for i in range(5):
            answer = await pool.post("/v2/models/m/infer", f"q{i}".encode(), {"Content-Type": "x"})
            assert (answer.status, answer.body) == (200, f"echo q{i}".encode())
            assert answer.headers["content-length"] == str(len(answer.body))

    assert serve(echo, run) == [5]


def test_concurrent_requests_each_get_their_own_answer_on_their_own_connection() -> None:
    bodies = [f"query {i}".encode() * (i + 1) for i in range(8)]

    async def run(pool: AsyncHttpConnections) -> None:
        for _ in range(2):  # the second time on the same 8 connections
            answers = await asyncio.gather(*(pool.post("/p", body, {}) for body in bodies))
            assert [a.body for a in answers] == [b"echo " + body for body in bodies]

    assert serve(echo, run) == [2] * 8


def test_chunked_and_error_answers_are_read_whole() -> None:
    def reply(body: bytes, n: int) -> tuple[bytes, str]:
        if n == 1:
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", ""
        return ok(b'{"error":"unknown model"}').replace(b"200 OK", b"400 Bad Request"), ""

    async def run(pool: AsyncHttpConnections) -> None:
        assert (await pool.post("/p", b"x", {})).body == b"abcdefg"
        answer = await pool.post("/p", b"x", {})
        assert (answer.status, answer.body) == (400, b'{"error":"unknown model"}')

    assert serve(reply, run) == [2]


def test_connection_close_answers_are_not_reused() -> None:
    async def run(pool: AsyncHttpConnections) -> None:
        for _ in range(3):
            assert (await pool.post("/p", b"x", {})).body == b"bye"

    assert serve(lambda body, n: (ok(b"bye", "Connection: close\r\n"), ""), run) == [1, 1, 1]


@pytest.mark.parametrize("pause_s", [0.0, 0.05])
def test_a_connection_the_server_closed_unannounced_is_never_reused(pause_s: float) -> None:
    """The server closes every connection after one answer, saying nothing: seen while idle (pause) the
    connection is not handed out, seen only as the next request goes out (no pause) the request is sent again."""

    async def run(pool: AsyncHttpConnections) -> None:
        for _ in range(3):
            assert (await pool.post("/p", b"x", {})).body == b"once"
            await asyncio.sleep(pause_s)

    assert serve(lambda body, n: (ok(b"once"), "close"), run) == [1, 1, 1]


def test_a_request_the_server_drops_unanswered_is_sent_once_more_on_a_new_connection() -> None:
    # each connection answers its first request and closes on its second, answering nothing (a restart, an idle
    # timeout racing the request)
    async def run(pool: AsyncHttpConnections) -> None:
        for _ in range(3):
            assert (await pool.post("/p", b"x", {})).body == b"first"

    assert serve(lambda body, n: (ok(b"first"), "") if n == 1 else (b"", "close"), run) == [2, 2, 1]


def test_an_answer_cut_off_midway_is_an_error_and_not_sent_again() -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"

    async def closed(pool: AsyncHttpConnections) -> None:
        with pytest.raises(ConnectionError) as broken:
            await pool.post("/p", b"x", {})
        assert isinstance(from_triton_exception(broken.value), ServerUnavailable)

    async def hangs(pool: AsyncHttpConnections) -> None:
        with pytest.raises(TimeoutError) as late:
            await pool.post("/p", b"x", {})
        assert isinstance(from_triton_exception(late.value), RequestTimeout)
        assert pool._idle == []

    assert serve(lambda body, n: (partial, "close"), closed) == [1]
    assert serve(lambda body, n: (partial, ""), hangs, timeout_s=0.3) == [1]


def test_a_malformed_answer_is_an_http_error_and_the_connection_dropped() -> None:
    async def run(pool: AsyncHttpConnections) -> None:
        with pytest.raises(http.client.HTTPException):
            await pool.post("/p", b"x", {})
        assert pool._idle == []

    assert serve(lambda body, n: (b"NOT HTTP AT ALL\r\n\r\n", ""), run) == [1]


def test_no_server_is_a_connection_error() -> None:
    async def refused() -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        await AsyncHttpConnections("127.0.0.1", port, timeout_s=2).post("/p", b"x", {})

    with pytest.raises(OSError) as raised:
        asyncio.run(refused())
    assert isinstance(from_triton_exception(raised.value), ServerUnavailable)


def test_a_probe_asks_on_a_connection_of_its_own_and_reset_empties_the_pool() -> None:
    async def run(pool: AsyncHttpConnections) -> None:
        assert (await pool.post("/p", b"a", {})).body == b"echo a"  # pooled
        probed = await pool.probe("/v2/models/m/ready", 1.0)  # a second connection, closed after its answer
        assert (probed.status, probed.body) == (200, b"echo ")
        assert len(pool._idle) == 1
        busy = asyncio.ensure_future(pool.post("/p", b"b", {}))  # takes the pooled connection
        await asyncio.sleep(0)
        pool.reset()  # the busy connection is not pooled again once its answer is in
        assert (await busy).body == b"echo b" and pool._idle == []
        assert (await pool.post("/p", b"c", {})).body == b"echo c"  # a new connection

    assert serve(echo, run) == [2, 1, 1]


class _ClosedUnderIt:
    """A pooled connection's transport as the event loop leaves it when the server reset the connection and
    `connection_lost` has not run yet: closing (asyncio drops what is written), or already closed (uvloop raises)."""

    def __init__(self, transport: asyncio.BaseTransport, raises: bool) -> None:
        self.transport, self.raises = transport, raises

    def is_closing(self) -> bool:
        return not self.raises

    def write(self, data: bytes) -> None:
        if self.raises:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    def close(self) -> None:
        self.transport.close()


@pytest.mark.parametrize("raises", [False, True], ids=["closing", "closed"])
def test_a_pooled_connection_reset_under_it_is_replaced_not_an_error(raises: bool) -> None:
    async def run(pool: AsyncHttpConnections) -> None:
        assert (await pool.post("/p", b"a", {})).body == b"echo a"
        (pooled,) = pool._idle
        pooled.transport = _ClosedUnderIt(pooled.transport, raises)  # type: ignore[assignment, arg-type]
        assert (await pool.post("/p", b"b", {})).body == b"echo b"  # at once, on a new connection
        assert pooled.closed

    assert serve(echo, run) == [1, 1]


@pytest.mark.parametrize("pause_s", [0.0, 0.05])
def test_an_answer_nobody_asked_for_is_never_read_as_the_next_one(pause_s: float) -> None:
    """After its answer the server writes a 408 of its own (as servers do on an idle timeout), in the same write
    and before it closes: the first answer stands as sent, the next request gets its own answer."""
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nX-Stray: 1\r\n\r\n"

    async def run(pool: AsyncHttpConnections) -> None:
        for i in range(3):
            answer = await pool.post("/p", f"q{i}".encode(), {})
            assert (answer.status, answer.body) == (200, f"echo q{i}".encode())
            assert "x-stray" not in answer.headers
            await asyncio.sleep(pause_s)

    assert serve(lambda body, n: (ok(b"echo " + body) + stray, ""), run) == [1, 1, 1]
