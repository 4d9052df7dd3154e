"""The proxy's HTTP protocol sends each response's head and body in one write (real uvicorn protocols, httptools
(what the proxy runs) and h11, a real Starlette app with a middleware, a recording transport; no sockets).

A proxy killed between a head and its body leaves nginx with a header it has already passed on and cannot
retry elsewhere: the client gets a broken response (seen in CI: `RemoteProtocolError` behind nginx)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.server import ServerState

from bge_triton.client.proxy.connections import HeadWithBodyTransport, bounded_protocol

REQUEST = b"POST /v1/embeddings HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2\r\n\r\n{}"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class YieldingMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Response:
        return await call_next(request)  # the head and the body reach uvicorn through anyio streams


async def embeddings(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"data": [{"embedding": "AAAA"}]})


async def no_content(request: Request) -> Response:
    return Response(status_code=204)


PARSERS = pytest.mark.parametrize("parser", ["httptools", "h11"])


def _serve(raw: bytes, parser: str) -> RecordingTransport:
    app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/empty", no_content)])
    app.add_middleware(YieldingMiddleware)
    protocol_class = bounded_protocol(5.0, 100, parser)
    config = uvicorn.Config(app, http=protocol_class, log_level="warning", access_log=False)
    transport = RecordingTransport()

    async def run() -> None:
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(transport)
        protocol.data_received(raw)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if protocol.cycle is not None and protocol.cycle.response_complete:
                break
        protocol.connection_lost(None)

    asyncio.run(run())
    return transport


@PARSERS
def test_head_and_body_leave_in_one_write(parser: str) -> None:
    writes = [w for w in _serve(REQUEST, parser).writes if w]
    assert len(writes) == 1, writes
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b'{"data":[{"embedding":"AAAA"}]}'


@PARSERS
def test_a_response_without_body_is_still_sent(parser: str) -> None:
    writes = [w for w in _serve(b"GET /empty HTTP/1.1\r\nHost: proxy\r\n\r\n", parser).writes if w]
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 204 No Content\r\n"), writes


def test_a_held_head_is_flushed_before_close() -> None:
    inner = RecordingTransport()
    transport = HeadWithBodyTransport(inner)
    transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
    assert inner.writes == []
    transport.close()
    assert inner.writes == [b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"] and inner.closed


@PARSERS
def test_continue_is_not_held(parser: str) -> None:
    """A client sending `Expect: 100-continue` waits for the 100 before its body: holding it would hang both."""
    raw = b"POST /v1/embeddings HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    writes = [w for w in _serve(raw, parser).writes if w]
    assert writes and writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n", writes


def test_the_proxy_parses_with_httptools_on_uvloop() -> None:
    """Issue 19: the C parser and uvloop took ~0.5 ms of CPU off each request on 2 cores."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from bge_triton.client.proxy.server import build_server
    from bge_triton.client.proxy.settings import ProxySettings

    config = build_server(ProxySettings(port=0)).config
    assert issubclass(config.http, HttpToolsProtocol)  # type: ignore[arg-type]
    assert config.loop == "uvloop"
