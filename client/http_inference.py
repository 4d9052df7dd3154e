"""Embedding requests over Triton's HTTP/REST endpoint with the binary tensor extension, built directly.

The HTTP twin of grpc_inference.py (issue 19). tritonclient's HTTP clients run on gevent (sync) or aiohttp
(asyncio) and build each request through InferInput objects; for one short RAG query, a POST through the
standard library's `http.client` on a kept-alive connection answered 0.65-1.0 ms sooner than even a bare gRPC
stub on this project's 2-core VM (bench/results/2026-12-02-issue19-http-vs-grpc.json). Here:

- the request is the KServe v2 JSON header followed by the raw input bytes (`Inference-Header-Content-Length`),
  every output asked for in binary, as tritonclient.http sends it;
- the answer is read as tritonclient's `InferResult` reads it (`InferAnswer`, tested against it), and a non-200
  answer raises tritonclient's `InferenceServerException` with Triton's message and the HTTP status, as
  tritonclient does, so `errors.from_triton_exception` maps both paths the same way;
- `HttpSender` (sync) keeps one kept-alive socket per thread (http_connection.py: 0.44 ms of CPU per call where
  `http.client` took 0.85); `AsyncHttpSender` a pool of asyncio connections (async_http_connections.py: 0.69 ms
  of CPU per call where aiohttp took 1.28); httptools parses both. A kept-alive connection the server closed
  while idle (a Triton restart) is opened again at once: an embedding request has no side effects, so sending it
  again is safe.
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import orjson
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, triton_to_np_dtype

from .async_http_connections import AsyncHttpConnections
from .http_connection import HttpAnswer, HttpConnection
from .raw_tensors import raw_contents

HEADER_LENGTH = "Inference-Header-Content-Length"
READY_PROBE_S = 2.0  # a Triton that leaves a new connection unanswered this long is not ready (it may be draining)
_HEADERS = {"Content-Type": "application/octet-stream"}


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
    head = orjson.dumps(header)
    return HttpInferRequest(f"/v2/models/{quote(model, safe='')}/infer", head + data, len(head))


def _headers(request: HttpInferRequest) -> dict[str, str]:
    return {**_HEADERS, HEADER_LENGTH: str(request.header_length)}


class InferAnswer:
    """Triton's answer to one inference request: its outputs as numpy arrays, read the way tritonclient's
    `InferResult` reads them (binary outputs after the JSON header, in the header's order; JSON `data` otherwise).
    Read here rather than by `InferResult.from_response_body`, which defines a class per answer: 55.6 against
    16.0 us per answer on this project's VM (issue 19, bench/results/2026-12-02-issue19-answer-reading.json)."""

    __slots__ = ("outputs",)

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        """The output `name` (None when the answer has no such output), as InferResult.as_numpy."""
        return self.outputs.get(name)


def _read_outputs(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    header = orjson.loads(body if header_length is None else body[:header_length])
    offset = len(body) if header_length is None else header_length
    outputs: dict[str, np.ndarray] = {}
    for output in header.get("outputs") or ():
        datatype = output["datatype"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.array(output["data"], dtype=triton_to_np_dtype(datatype))
        else:
            if offset + size > len(body):
                raise ValueError(f"output {output['name']!r} runs past the end of the answer")
            if datatype == "BYTES":
                array = deserialize_bytes_tensor(body[offset : offset + size])
            else:
                dtype = np.dtype(triton_to_np_dtype(datatype))
                array = np.frombuffer(body, dtype, size // dtype.itemsize, offset)
            offset += size
        outputs[output["name"]] = array.reshape(output["shape"])
    return outputs


def read_answer(status: int, header_length: str | None, content_encoding: str | None, body: bytes) -> InferAnswer:
    """Triton's answer; a non-200 answer raises tritonclient's InferenceServerException (Triton's message, the
    status), as tritonclient does, and so does an answer that cannot be read."""
    if status != 200:
        raise InferenceServerException(msg=_error_message(status, body), status=str(status))
    try:
        if content_encoding == "gzip":
            body = gzip.decompress(body)
        elif content_encoding == "deflate":
            body = zlib.decompress(body)
        return InferAnswer(_read_outputs(body, int(header_length) if header_length else None))
    except Exception as exc:  # a 200 that is not an inference answer (whatever the reading trips on)
        raise InferenceServerException(msg=f"unreadable inference answer: {exc}") from exc


def _read(answer: HttpAnswer) -> InferAnswer:
    headers = answer.headers
    return read_answer(answer.status, headers.get(HEADER_LENGTH.lower()), headers.get("content-encoding"), answer.body)


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
    """Sends HttpInferRequests from any thread, on one kept-alive connection (http_connection.py) per thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.host, self.port = _host_port(url)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._connections: list[HttpConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> HttpConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = HttpConnection(self.host, self.port or 80, self.timeout_s)
            with self._lock:
                self._connections.append(connection)
        return connection

    def __call__(self, request: HttpInferRequest) -> InferAnswer:
        return _read(self._connection().post(request.path, request.body, _headers(request)))

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

    async def __call__(self, request: HttpInferRequest) -> InferAnswer:
        return _read(await self._connections.post(request.path, request.body, _headers(request)))

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
