"""One kept-alive HTTP/1.1 connection to Triton from blocking code: a socket whose answers httptools parses (the C
parser the proxy's uvicorn and async_http_connections.py use), and the pieces both HTTP clients share.

Why not `http.client` (issue 19): most of its CPU per call goes to request building and to header parsing (the
`email` package). One short RAG query to Triton on this project's 2-core VM, 400 paired rounds: the client's CPU
per call 0.85 ms with `http.client` (and tritonclient's answer reading), 0.44 ms on a kept-alive socket whose
answer httptools parses, and the query back 0.37 ms sooner (bench/results/2026-12-02-issue19-sync-http-client.json).
Triton's infer answer is one small message with a Content-Length, so a connection carries one request at a time.

What a connection does for its caller: one the server closed while it sat idle (a Triton restart, an idle timeout)
is noticed before anything is sent and opened again; one that closes just as a request is written is tried once
more on a new connection, as long as no byte of an answer came back (an embedding request has no side effects).
The whole exchange has one deadline. A timeout, a malformed answer or a connection lost mid-answer closes it.
Errors are the standard library's: `TimeoutError`, `ConnectionError` / `OSError`, `http.client.HTTPException`.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Mapping

import httptools

_READ_SIZE = 256 * 1024


class AnswerBroken(ConnectionError):
    """The connection closed before a whole answer came back; `started` says whether any of it had."""

    def __init__(self, message: str, started: bool) -> None:
        super().__init__(message)
        self.started = started


class HttpAnswer:
    """One HTTP answer: the status, the headers (names lower-cased) and the body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def authority(host: str, port: int) -> str:
    """`host:port` as a Host header writes it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def request_bytes(method: str, path: str, host: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """One whole HTTP/1.1 request: the start line, Host, `headers`, Content-Length and `body`."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    start = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    return start.encode("latin-1") + body


class AnswerReader:
    """Collects one answer from the bytes `feed` gets (httptools calls the `on_*` methods); bytes past it (a second
    answer nobody asked for, such as a server's 408 before it closes) mark it `stray` and change nothing. Both
    HTTP clients read their answers with it."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answer: HttpAnswer | None = None
        self.keep_alive = False
        self.stray = False
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def on_message_begin(self) -> None:
        if self.answer is not None:
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.answer is None:
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self.answer is None:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self.answer is None:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self.answer = HttpAnswer(self.parser.get_status_code(), self._headers, body)
            self.keep_alive = self.parser.should_keep_alive()  # read here: the parser resets after the message

    def feed(self, data: bytes) -> None:
        """Parse `data`: http.client.HTTPException when the answer is not HTTP; garbage after a whole answer only
        marks it stray."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.answer is None:
                raise http.client.HTTPException(f"unreadable HTTP answer: {exc}") from exc
            self.stray = True

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request: kept alive, nothing stray after the answer."""
        return self.keep_alive and not self.stray


class HttpConnection:
    """POSTs to one `host:port` on one kept-alive socket, from one thread at a time."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._authority = authority(host, port)
        self._socket: socket.socket | None = None

    @property
    def is_open(self) -> bool:
        return self._socket is not None

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        """POST `body` to `path` with `headers` (Host and Content-Length added); the whole answer, any status,
        within `timeout_s` in all."""
        data = request_bytes("POST", path, self._authority, body, headers)
        deadline = time.monotonic() + self.timeout_s
        if self._socket is not None and not self._idle_and_open(self._socket):
            self.close()  # closed by the server while idle (or sent bytes nobody asked for): a new one
        if self._socket is not None:
            try:
                return self._exchange(self._socket, data, deadline)
            except AnswerBroken as exc:
                if exc.started:
                    raise
                # closed by the server as the request went out: once more, on a new connection
        return self._exchange(self._connect(deadline), data, deadline)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    # -- one exchange ------------------------------------------------------------------------------
    def _connect(self, deadline: float) -> socket.socket:
        timeout_s = _remaining(deadline, self.timeout_s)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no connection to {self._authority} within {self.timeout_s:g} s") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock
        return sock

    def _exchange(self, sock: socket.socket, data: bytes, deadline: float) -> HttpAnswer:
        """Send `data`, read one answer; the socket is closed on any failure and after a `Connection: close`."""
        reader = AnswerReader()
        started = False
        try:
            try:
                sock.settimeout(_remaining(deadline, self.timeout_s))
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise AnswerBroken(f"the connection closed before the request went out: {exc}", False) from exc
            except TimeoutError:
                raise TimeoutError(f"request not sent within {self.timeout_s:g} s") from None
            while reader.answer is None:
                sock.settimeout(_remaining(deadline, self.timeout_s))
                try:
                    chunk = sock.recv(_READ_SIZE)
                except ConnectionResetError as exc:
                    raise AnswerBroken(f"the server reset the connection: {exc}", started) from exc
                except TimeoutError:
                    raise TimeoutError(f"no answer within {self.timeout_s:g} s") from None
                if not chunk:
                    raise AnswerBroken("the server closed the connection", started)
                started = True
                reader.feed(chunk)
        except BaseException:  # a timeout, a broken or unreadable answer, an interrupt: not reusable
            self.close()
            raise
        if not reader.reusable:
            self.close()
        assert reader.answer is not None
        return reader.answer

    @staticmethod
    def _idle_and_open(sock: socket.socket) -> bool:
        """Nothing to read on an idle connection: the server has not closed it (its EOF, or bytes nobody asked
        for, would be there to peek at). The exchange sets the socket's timeout again."""
        sock.setblocking(False)
        try:
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:  # reset while idle
            return False
        return False


def _remaining(deadline: float, timeout_s: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    return remaining
