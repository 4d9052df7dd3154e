"""Kept-alive HTTP/1.1 connections to one Triton for asyncio: a pool of `asyncio.Protocol` connections whose
answers httptools parses (the C parser uvicorn serves the proxy with).

Why not aiohttp (issue 19): for one short RAG query through the proxy, aiohttp's request machinery (its client
session, connector, response and stream objects per call) cost 1.28 ms of CPU per call to Triton on this
project's 2-core VM, as much as grpc.aio (1.25 ms; 1.11 without gRPC's retry machinery); a request written
straight to a kept-alive transport and its answer parsed by httptools cost 0.69 ms, and answered the same query
0.75 ms sooner than grpc.aio (about 0.5 ms sooner than grpc.aio without retries)
(bench/results/2026-12-02-issue19-async-triton-calls.json, 400 paired rounds). Triton's infer answer is one small
message with a Content-Length, so a connection holds one request at a time and the pool hands out idle ones,
newest first.

What the pool does for the caller: a connection the server closed while it sat idle (a Triton restart, an idle
timeout) is noticed (`connection_lost`) and never handed out; one that closes just as a request is written is
tried once more on a new connection, as long as no byte of an answer came back (an embedding request has no side
effects). A timeout, a malformed answer or a connection lost mid-answer closes that connection. Errors are the
standard library's: `TimeoutError`, `ConnectionError` / `OSError`, `http.client.HTTPException`.
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Mapping

from .http_connection import AnswerBroken, AnswerReader, HttpAnswer, authority, request_bytes


class _Connection(asyncio.Protocol):
    """One TCP connection carrying one request at a time; its answer read by an AnswerReader as bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.generation = 0
        self.closed = False
        self.keep_alive = False
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._reader: AnswerReader | None = None
        self._started = False

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter, reader = self._waiter, self._reader
        if waiter is None or reader is None:  # bytes nobody asked for: this connection can no longer be trusted
            self.close()
            return
        self._started = True
        try:
            reader.feed(data)
        except http.client.HTTPException as exc:
            self._fail(exc)
            return
        if reader.answer is not None:
            self._waiter = None
            self.keep_alive = reader.reusable
            if reader.stray:  # a second answer in the same read (a server's 408 before it closes): untrusted
                self.close()
            if not waiter.done():
                waiter.set_result(reader.answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        detail = f": {exc}" if exc else ""
        self._fail(AnswerBroken(f"the server closed the connection{detail}", self._started))

    # -- requests --------------------------------------------------------------------------------------
    def exchange(self, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[HttpAnswer]:
        """Write one whole request; the future answers it. A connection the server already closed (its close
        not yet delivered to `connection_lost`) raises `AnswerBroken` with nothing sent."""
        assert self.transport is not None and self._waiter is None
        if self.closed or self.transport.is_closing():
            raise AnswerBroken("the server closed the connection before the request went out", started=False)
        self._waiter = waiter = loop.create_future()
        self._started, self._reader = False, AnswerReader()
        try:
            self.transport.write(data)
        except RuntimeError as exc:  # uvloop: "unable to perform operation on <TCPTransport closed=True ...>"
            self._waiter = None
            raise AnswerBroken(f"the connection closed before the request went out: {exc}", started=False) from exc
        return waiter

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class AsyncHttpConnections:
    """POSTs to one `host:port` over a pool of kept-alive connections, from the event loop that uses it."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._authority = authority(host, port)
        self._idle: list[_Connection] = []
        self._generation = 0  # a connection opened before the last reset() is not pooled again

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        """POST `body` to `path` with `headers` (Host and Content-Length added); the whole answer, any status."""
        data = self._request("POST", path, body, headers)
        loop = asyncio.get_running_loop()
        connection = self._take_idle()
        if connection is not None:
            try:
                return await self._exchange(connection, data, loop)
            except AnswerBroken as exc:
                if exc.started:
                    raise
                # closed by the server as the request went out: once more, on a new connection
        return await self._exchange(await self._open(loop), data, loop)

    async def probe(self, path: str, timeout_s: float) -> HttpAnswer:
        """GET `path` on a new connection, closed after the answer; connecting and the answer each within
        `timeout_s` (a draining Triton leaves a new connection unanswered)."""
        loop = asyncio.get_running_loop()
        data = self._request("GET", path, b"", {"Connection": "close"})
        connection = await self._open(loop, timeout_s)
        try:
            return await self._exchange(connection, data, loop, timeout_s, pool=False)
        finally:
            connection.close()

    def reset(self) -> None:
        """Close the pooled connections now and the busy ones once their answer is in."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _request(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        return request_bytes(method, path, self._authority, body, headers)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _open(self, loop: asyncio.AbstractEventLoop, timeout_s: float | None = None) -> _Connection:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(_Connection, self.host, self.port), timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no connection to {self._authority} within {timeout_s:g} s") from None
        connection.generation = self._generation
        return connection

    async def _exchange(
        self,
        connection: _Connection,
        data: bytes,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float | None = None,
        *,
        pool: bool = True,
    ) -> HttpAnswer:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            waiter = connection.exchange(data, loop)
        except BaseException:
            connection.close()
            raise
        timer = loop.call_later(timeout_s, _time_out, waiter, timeout_s)
        try:
            answer = await waiter
        except BaseException:  # a timeout, a broken or unreadable answer, a cancelled caller: not reusable
            connection.close()
            raise
        finally:
            timer.cancel()
        if pool and connection.generation == self._generation and connection.keep_alive and not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    def close(self) -> None:
        """Close the idle connections; busy ones close when their answer is in."""
        self.reset()


def _time_out(waiter: asyncio.Future[HttpAnswer], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer within {timeout_s:g} s"))
