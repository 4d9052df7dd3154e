"""Embedding requests over Triton's HTTP/REST endpoint with the binary tensor extension, built directly.

The HTTP twin of grpc_inference.py (issue 19). tritonclient's HTTP clients run on gevent (sync) or aiohttp
(asyncio) and build each request through InferInput objects; for one short RAG query, a POST through the
standard library's `http.client` on a kept-alive connection answered 0.65-1.0 ms sooner than even a bare gRPC
stub on this project's 2-core VM (bench/results/2026-12-02-issue19-http-vs-grpc.json). Here:

- the request is the KServe v2 JSON header followed by the raw input bytes (`Inference-Header-Content-Length`),
  every output asked for in binary, as tritonclient.http sends it;
- the answer is read by tritonclient's own `InferResult.from_response_body`, and a non-200 answer raises
  tritonclient's `InferenceServerException` with Triton's message and the HTTP status, as tritonclient does, so
  `errors.from_triton_exception` maps both paths the same way;
- `HttpSender` (sync) keeps one `http.client` connection per thread; `AsyncHttpSender` a pool of asyncio
  connections whose answers httptools parses (async_http_connections.py: 0.69 ms of CPU per call where aiohttp
  took 1.28). A kept-alive connection the server closed while idle (a Triton restart) is reopened once at
  once: an embedding request has no side effects, so sending it again is safe.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
from tritonclient.http import InferResult
from tritonclient.utils import InferenceServerException

from .async_http_connections import AsyncHttpConnections
from .raw_tensors import raw_contents

HEADER_LENGTH = "Inference-Header-Content-Length"
READY_PROBE_S = 2.0  # a Triton that leaves a new connection unanswered this long is not ready (it may be draining)
_HEADERS = {"Content-Type": "application/octet-stream"}
# What a kept-alive connection raises when the server closed it while it sat idle.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class HttpInferRequest:
    """One POST to /v2/models/<model>/infer: the path, the body and its JSON header's length."""

    path: str
    body: bytes
    header_length: int


def infer_request(
    model: str, input_name: str, datatype: str, chunk: np.ndarray, outputs: Sequence[str]
) -> HttpInferRequest:
    """`chunk` as the only input, `outputs` asked for by name, all tensors in binary."""
    data = raw_contents(chunk, datatype)
    header = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(chunk.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return HttpInferRequest(f"/v2/models/{quote(model, safe='')}/infer", head + data, len(head))


def _headers(request: HttpInferRequest) -> dict[str, str]:
    return {**_HEADERS, HEADER_LENGTH: str(request.header_length)}


def read_answer(status: int, header_length: str | None, content_encoding: str | None, body: bytes) -> InferResult:
    """Triton's answer as tritonclient's InferResult; a non-200 answer raises InferenceServerException."""
    if status != 200:
        raise InferenceServerException(msg=_error_message(status, body), status=str(status))
    try:
        return InferResult.from_response_body(
            body, header_length=int(header_length) if header_length else None, content_encoding=content_encoding
        )
    except Exception as exc:  # a 200 that is not an inference answer (whatever the parser trips on)
        raise InferenceServerException(msg=f"unreadable inference answer: {exc}") from exc


def _error_message(status: int, body: bytes) -> str:
    """Triton's `{"error": "..."}`; any other body (a load balancer's page) shortened, with the status."""
    text = body.decode("utf-8", "replace")
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if isinstance(found, dict) and isinstance(found.get("error"), str):
        return found["error"]
    return f"HTTP {status}: {text.strip()[:200] or http.client.responses.get(status, 'error')}"


def _host_port(url: str) -> tuple[str, int | None]:
    host, _, port = url.rpartition(":")
    if host and port.isdigit():
        return host.strip("[]"), int(port)
    return url, None


class HttpSender:
    """Sends HttpInferRequests from any thread, on one kept-alive `http.client` connection per thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.host, self.port = _host_port(url)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it has carried a request before."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        connection = self._local.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        with self._lock:
            self._connections.append(connection)
        return connection, False

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)

    def __call__(self, request: HttpInferRequest) -> InferResult:
        connection, reused = self._connection()
        try:
            connection.request("POST", request.path, request.body, _headers(request))
            response = connection.getresponse()
            body = response.read()
        except _STALE_CONNECTION:
            self._drop(connection)
            if not reused:
                raise
            return self(request)  # once, on a new connection: this one was closed while idle
        except BaseException:
            self._drop(connection)  # a timeout or an error mid-answer leaves the connection unusable
            raise
        if response.will_close:
            self._drop(connection)
        return read_answer(
            response.status, response.getheader(HEADER_LENGTH), response.getheader("Content-Encoding"), body
        )

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for connection in connections:
            connection.close()


class AsyncHttpSender:
    """Sends HttpInferRequests from one event loop, over kept-alive connections (async_http_connections.py)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        host, port = _host_port(url)
        self.timeout_s = timeout_s
        self._connections = AsyncHttpConnections(host, port or 80, timeout_s)

    async def __call__(self, request: HttpInferRequest) -> InferResult:
        answer = await self._connections.post(request.path, request.body, _headers(request))
        headers = answer.headers
        return read_answer(
            answer.status, headers.get(HEADER_LENGTH.lower()), headers.get("content-encoding"), answer.body
        )

    async def model_ready(self, model: str) -> bool:
        """Triton's answer on a connection of its own within READY_PROBE_S: a Triton shutting down leaves it
        unanswered while it still answers READY on the kept-alive ones."""
        answer = await self._connections.probe(
            f"/v2/models/{quote(model, safe='')}/ready", min(self.timeout_s, READY_PROBE_S)
        )
        return answer.status == 200

    def reset(self) -> None:
        """Close the kept-alive connections (a Triton shutting down waits for them until its exit timeout)."""
        self._connections.reset()

    async def close(self) -> None:
        self._connections.close()
