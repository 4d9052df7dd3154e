"""Bounded client connections: a header timeout, a connection cap, and a rate-limited out-of-descriptors log.

uvicorn (with httptools, the proxy's parser, as with h11) keeps a connection whose request head never completes
for ever, so ~20,000 held partial-header connections took every descriptor of the proxy, after which asyncio
logged "socket.accept() out of system resource" with a traceback on every accept attempt. Here:

- a connection that has not sent a complete request head within `header_timeout_s` of connecting (or of
  sending the first bytes of its next request) is closed;
- past `max_connections` open connections a new one is closed at once (what uvicorn's `limit_concurrency`
  cannot do: it answers 503 but keeps the connection and its descriptor), kept below the descriptor limit;
- the out-of-descriptors line of the event loop is logged once per `LOG_INTERVAL_S` with the count since;
- a response's status line and headers leave in the same write as the first body bytes (`HeadWithBodyTransport`),
  so a proxy killed between the two never leaves nginx holding a header it can no longer retry elsewhere.

A reverse proxy in front (nginx: `client_header_timeout`, `limit_conn`) is the other place for these bounds.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("bge_triton.proxy")
LOG_INTERVAL_S = 10.0
DESCRIPTOR_RESERVE = 256  # descriptors left for Triton clients, log files and the listening socket


class RateLimitedWarning:
    """A warning logged at most once per `interval_s`, with how many were held back since the last one."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S):
        self.interval_s = interval_s
        self.held_back = 0
        self._last = -float("inf")

    def __call__(self, message: str, *args: object) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.held_back += 1
            return False
        more = f" (and {self.held_back} more in the last {self.interval_s:g} s)" if self.held_back else ""
        log.warning(message + more, *args)
        self._last, self.held_back = now, 0
        return True


def raise_descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(wanted: int) -> int:
    """`wanted`, lowered to what the descriptor limit leaves room for."""
    return max(1, min(wanted, raise_descriptor_limit() - DESCRIPTOR_RESERVE))


class HeadWithBodyTransport:
    """A transport that holds a final response head (status line + headers) until the next write, and sends both
    in one `write`.

    uvicorn writes the head when the app sends `http.response.start` and the body at the next ASGI message, which
    middleware may deliver a loop turn later. A process killed in between leaves its peer with a head and no body:
    nginx has then already answered its client's header and cannot retry the request on another proxy, so the
    client sees a broken response. Informational heads (`100 Continue`) pass at once: the client waits for them.
    """

    def __init__(self, inner: asyncio.Transport) -> None:
        self._inner = inner
        self._held = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if self._held:
            data, self._held = self._held + data, b""
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1") and data.endswith(b"\r\n\r\n"):
            self._held = data
            return
        if data:
            self._inner.write(data)

    def close(self) -> None:
        if self._held:
            data, self._held = self._held, b""
            self._inner.write(data)
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def bounded_protocol(
    header_timeout_s: float, max_connections: int, parser: str = "httptools"
) -> type[H11Protocol | HttpToolsProtocol]:
    """uvicorn's HTTP/1.1 protocol (`parser`: httptools, its C parser, or h11, pure Python) with a header timeout, a
    connection cap and each response's head sent with its body (pass as `uvicorn.Config(http=...)`)."""
    refused = RateLimitedWarning()
    base: type[Any] = {"httptools": HttpToolsProtocol, "h11": H11Protocol}[parser]

    class BoundedProtocol(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(HeadWithBodyTransport(transport))  # type: ignore[arg-type]
            self._head_timer: asyncio.TimerHandle | None = None
            if len(self.connections) > max_connections:
                refused("%d connections open (--max-connections): closing new ones", len(self.connections) - 1)
                transport.close()
                return
            self._arm()

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._between_requests():
                self._arm()  # the head of the (next) request is not complete yet
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedProtocol


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log the loop's "socket.accept() out of system resource" (EMFILE...) at most once per LOG_INTERVAL_S,
    without its traceback; every other loop error as before."""
    previous = loop.get_exception_handler()
    accept_failed = RateLimitedWarning()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            accept_failed("%s: %s", message, context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
