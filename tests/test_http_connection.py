"""client/http_connection.py: the kept-alive socket the sync client library's HTTP calls to Triton go through,
against a scripted server (the real Triton paths: test_client_library.py's http modes, test_http_inference.py)."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from scripted_http import Reply, echo, ok, scripted_handler

from bge_triton.client.errors import RequestTimeout, ServerUnavailable, from_triton_exception
from bge_triton.client.http_connection import HttpConnection, request_bytes


@contextmanager
def serving(reply: Reply, timeout_s: float = 2.0, trickle_s: float = 0.0) -> Iterator[tuple[HttpConnection, list[int]]]:
    """A connection to a server (in a thread) answering each request with `reply`, `trickle_s` between its bytes;
    how many requests each server-side connection carried."""
    carried: list[int] = []
    ready = threading.Event()
    state: dict[str, object] = {}

    def run_server() -> None:
        async def main() -> None:
            server = await asyncio.start_server(scripted_handler(reply, carried, trickle_s), "127.0.0.1", 0)
            stop = asyncio.Event()
            state.update(port=server.sockets[0].getsockname()[1], stop=stop, loop=asyncio.get_running_loop())
            ready.set()
            await stop.wait()
            server.close()

        asyncio.run(main())

    thread = threading.Thread(target=run_server, daemon=True)
    thread.start()
    assert ready.wait(5)
    connection = HttpConnection("127.0.0.1", state["port"], timeout_s)  # type: ignore[arg-type]
    try:
        yield connection, carried
    finally:
        connection.close()
        loop, stop = state["loop"], state["stop"]
        loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
        thread.join(5)


def test_the_request_is_one_whole_http_11_post() -> None:
    data = request_bytes("POST", "/v2/models/m/infer", "127.0.0.1:8000", b"body", {"X-A": "1"})
    assert data == (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nX-A: 1\r\nContent-Length: 4\r\n\r\nbody"
    )


def test_sequential_requests_share_one_kept_alive_connection_and_get_their_own_answers() -> None:
    with serving(echo) as (connection, carried):
        for i in range(5):
            answer = connection.post("/v2/models/m/infer", f"q{i}".encode(), {"Content-Type": "x"})
            assert (answer.status, answer.body) == (200, f"echo q{i}".encode())
            assert answer.headers["content-length"] == str(len(answer.body))
        assert connection.is_open
    assert carried == [5]


def test_chunked_and_error_answers_are_read_whole() -> None:
    def reply(body: bytes, n: int) -> tuple[bytes, str]:
        if n == 1:
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", ""
        return ok(b'{"error":"unknown model"}').replace(b"200 OK", b"400 Bad Request"), ""

    big = b"x" * 3_000_000  # larger than one read
    with serving(reply) as (connection, carried):
        assert connection.post("/p", b"x", {}).body == b"abcdefg"
        answer = connection.post("/p", big, {})
        assert (answer.status, answer.body) == (400, b'{"error":"unknown model"}')
    assert carried == [2]
    with serving(lambda body, n: (ok(body), "")) as (connection, _):
        assert connection.post("/p", big, {}).body == big


def test_connection_close_answers_are_not_reused() -> None:
    with serving(lambda body, n: (ok(b"bye", "Connection: close\r\n"), "")) as (connection, carried):
        for _ in range(3):
            assert connection.post("/p", b"x", {}).body == b"bye"
            assert not connection.is_open
    assert carried == [1, 1, 1]


@pytest.mark.parametrize("end", ["close", "reset"])
@pytest.mark.parametrize("pause_s", [0.0, 0.05])
def test_a_connection_the_server_closed_unannounced_is_never_reused(end: str, pause_s: float) -> None:
    """The server ends every connection after one answer, saying nothing: seen while idle (pause) the request
    goes out on a new connection, seen only as the request goes out (no pause) it is sent again."""
    with serving(lambda body, n: (ok(b"once"), end)) as (connection, carried):
        for _ in range(3):
            assert connection.post("/p", b"x", {}).body == b"once"
            time.sleep(pause_s)
    assert carried == [1, 1, 1]


def test_a_request_the_server_drops_unanswered_is_sent_once_more_on_a_new_connection() -> None:
    # each connection answers its first request and closes on its second, answering nothing (a restart, an idle
    # timeout racing the request)
    with serving(lambda body, n: (ok(b"first"), "") if n == 1 else (b"", "close")) as (connection, carried):
        for _ in range(3):
            assert connection.post("/p", b"x", {}).body == b"first"
    assert carried == [2, 2, 1]


def test_an_answer_cut_off_midway_is_an_error_and_not_sent_again() -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
    with serving(lambda body, n: (partial, "close")) as (connection, carried):
        with pytest.raises(ConnectionError) as broken:
            connection.post("/p", b"x", {})
        assert isinstance(from_triton_exception(broken.value), ServerUnavailable)
        assert not connection.is_open
    assert carried == [1]
    with serving(lambda body, n: (partial, ""), timeout_s=0.3) as (connection, carried):
        with pytest.raises(TimeoutError) as late:
            connection.post("/p", b"x", {})
        assert isinstance(from_triton_exception(late.value), RequestTimeout)
        assert not connection.is_open
    assert carried == [1]


def test_the_timeout_bounds_the_whole_answer_not_each_read() -> None:
    # one byte every 50 ms: every read returns in time, the whole answer would take ~2 s
    with serving(lambda body, n: (ok(b"x" * 5), ""), timeout_s=0.4, trickle_s=0.05) as (connection, _):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.post("/p", b"x", {})
        assert time.monotonic() - started < 1.0
        assert not connection.is_open


def test_a_malformed_answer_is_an_http_error_and_the_connection_dropped() -> None:
    with serving(lambda body, n: (b"NOT HTTP AT ALL\r\n\r\n", "")) as (connection, carried):
        with pytest.raises(http.client.HTTPException) as raised:
            connection.post("/p", b"x", {})
        assert isinstance(from_triton_exception(raised.value), ServerUnavailable)
        assert not connection.is_open
    assert carried == [1]


def test_no_server_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError) as raised:
        HttpConnection("127.0.0.1", port, timeout_s=2).post("/p", b"x", {})
    assert isinstance(from_triton_exception(raised.value), ServerUnavailable)


@pytest.mark.parametrize("pause_s", [0.0, 0.05])
def test_an_answer_nobody_asked_for_is_never_read_as_the_next_one(pause_s: float) -> None:
    """After its answer the server writes a 408 of its own and closes (as servers do on an idle timeout), in the
    same write: the first answer stands as sent, and the next request gets its own answer, not the 408."""
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nX-Stray: 1\r\nConnection: close\r\n\r\n"
    with serving(lambda body, n: (ok(b"echo " + body) + stray, "close")) as (connection, carried):
        for i in range(3):
            answer = connection.post("/p", f"q{i}".encode(), {})
            assert (answer.status, answer.body) == (200, f"echo q{i}".encode())
            assert "x-stray" not in answer.headers
            time.sleep(pause_s)
    assert carried == [1, 1, 1]
