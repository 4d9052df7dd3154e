"""client/http_inference.py: tritonclient's request, the answer read as tritonclient reads it and of errors, and a
kept-alive connection the server closed reopened once (against a small stand-in HTTP server; the real Triton
paths are in test_client_library.py's http modes)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
import tritonclient.http as tc
from tritonclient.http._utils import _get_inference_request
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from bge_triton.client.errors import (
    ModelNotFound,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
    from_triton_exception,
)
from bge_triton.client.http_inference import AsyncHttpSender, HttpSender, infer_request, read_answer

VECTOR = np.array([[0.6, 0.8, 0.0]], dtype=np.float32)


def test_the_request_is_the_one_tritonclient_builds() -> None:
    texts = np.empty((2, 1), dtype=np.object_)
    texts[:, 0] = [b"passage: one", "二".encode()]
    ours = infer_request("my model", "TEXT", "BYTES", texts, ("EMBEDDING", "TOKEN_COUNT"))
    tensor = tc.InferInput("TEXT", [2, 1], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=True)
    outputs = [tc.InferRequestedOutput(name, binary_data=True) for name in ("EMBEDDING", "TOKEN_COUNT")]
    body, json_size = _get_inference_request([tensor], "", outputs, 0, False, False, 0, None, None)
    assert json.loads(ours.body[: ours.header_length]) == json.loads(body[:json_size])
    assert ours.body[ours.header_length :] == body[json_size:]
    assert ours.path == "/v2/models/my%20model/infer"
    ids = infer_request("m", "TOKEN_IDS", "INT64", np.array([[5, 6, 7]]), ("EMBEDDING",))
    assert ids.body[ids.header_length :] == np.array([5, 6, 7], "<i8").tobytes()


def _answer(vectors: np.ndarray) -> tuple[bytes, int]:
    data = vectors.astype("<f4").tobytes()
    header = {
        "model_name": "m",
        "outputs": [
            {
                "name": "EMBEDDING",
                "datatype": "FP32",
                "shape": list(vectors.shape),
                "parameters": {"binary_data_size": len(data)},
            }
        ],
    }
    head = json.dumps(header).encode()
    return head + data, len(head)


def _tritonclient_reading(body: bytes, header_length: int | None, names: list[str]) -> dict[str, np.ndarray]:
    result = tc.InferResult.from_response_body(body, header_length=header_length)
    return {name: result.as_numpy(name) for name in names}


def test_answers_are_read_as_tritonclient_reads_them() -> None:
    body, size = _answer(VECTOR)
    assert np.array_equal(read_answer(200, str(size), None, body).as_numpy("EMBEDDING"), VECTOR)
    texts = np.array([[b"a"], ["\u4e8c".encode()]], dtype=np.object_)
    tensors = {  # binary outputs of several types, one empty, and one in JSON
        "V": ("FP32", np.arange(6, dtype="<f4").reshape(2, 3)),
        "C": ("INT64", np.array([[16], [3]], dtype="<i8")),
        "H": ("FP16", np.array([[0.5, -2.0]], dtype="<f2")),
        "B": ("BOOL", np.array([True, False])),
        "S": ("BYTES", texts),
        "E": ("INT32", np.zeros((0, 4), dtype="<i4")),
    }
    outputs, data = [], b""
    for name, (datatype, array) in tensors.items():
        raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        outputs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                        "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
        data += raw
    outputs.append({"name": "J", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]})
    head = json.dumps({"model_name": "m", "outputs": outputs}).encode()
    names = [*tensors, "J", "absent"]
    ours = read_answer(200, str(len(head)), None, head + data)
    theirs = _tritonclient_reading(head + data, len(head), names)
    for name in names:
        mine, reference = ours.as_numpy(name), theirs[name]
        if reference is None:
            assert mine is None
            continue
        assert mine is not None and mine.dtype == reference.dtype and mine.shape == reference.shape, name
        assert np.array_equal(mine, reference), name
    assert ours.as_numpy("S").tolist() == [[b"a"], ["\u4e8c".encode()]]  # type: ignore[union-attr]
    all_json = json.dumps({"outputs": [{"name": "J", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1]}]})
    assert read_answer(200, None, None, all_json.encode()).as_numpy("J").tolist() == [[0.5, 1.0]]  # type: ignore[union-attr]
    packed = gzip.compress(head + data)
    assert np.array_equal(read_answer(200, str(len(head)), "gzip", packed).as_numpy("V"), tensors["V"][1])  # type: ignore[arg-type]


def test_an_answer_shorter_than_its_header_says_is_an_error_not_a_vector() -> None:
    body, size = _answer(VECTOR)
    for cut in (body[:-4], body[:-1], body[: size + 1]):
        with pytest.raises(InferenceServerException) as raised:
            read_answer(200, str(size), None, cut)
        assert isinstance(from_triton_exception(raised.value), ServerError)
        assert "'EMBEDDING' runs past the end of the answer" in str(raised.value)


def test_error_answers_raise_tritonclients_exception_with_status_and_message() -> None:
    with pytest.raises(InferenceServerException) as raised:
        read_answer(400, None, None, b'{"error":"Request for unknown model: \'x\' is not found"}')
    assert raised.value.status() == "400"
    assert isinstance(from_triton_exception(raised.value), ModelNotFound)
    with pytest.raises(InferenceServerException) as raised:
        read_answer(502, None, None, b"<html>Bad Gateway</html>")
    assert raised.value.message() == "HTTP 502: <html>Bad Gateway</html>"
    assert isinstance(from_triton_exception(raised.value), ServerUnavailable)
    with pytest.raises(InferenceServerException) as raised:  # a 200 that is not an inference answer
        read_answer(200, "5", None, b"hello")
    assert isinstance(from_triton_exception(raised.value), ServerError)


class _Triton(BaseHTTPRequestHandler):
    """Answers every infer POST with VECTOR. `mode` "idle-close" closes a connection, unanswered, when a second
    request arrives on it (what a client meets on a kept-alive connection the server closed while it sat idle:
    a restart, an idle timeout); "hang" never answers."""

    protocol_version = "HTTP/1.1"
    mode = "keep"
    answered: ClassVar[list[tuple[str, int]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.rfile.read(length)
        if self.mode == "hang":
            threading.Event().wait(5)
            return
        if self.mode == "idle-close" and getattr(self, "served", False):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.served = True
        type(self).answered.append((self.path, int(self.headers["Inference-Header-Content-Length"])))
        body, size = _answer(VECTOR)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Inference-Header-Content-Length", str(size))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def stand_in(mode: str, answered: list[tuple[str, int]] | None = None) -> Iterator[str]:
    handler = type("Handler", (_Triton,), {"mode": mode, "answered": [] if answered is None else answered})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _request() -> object:
    return infer_request("m", "TEXT", "BYTES", np.array([[b"query"]], dtype=np.object_), ("EMBEDDING",))


@pytest.mark.parametrize("mode", ["keep", "idle-close"])
def test_sync_sender_answers_every_call_and_reopens_a_closed_connection(mode: str) -> None:
    answered: list[tuple[str, int]] = []
    with stand_in(mode, answered) as url:
        sender = HttpSender(url, timeout_s=5)
        for _ in range(3):
            assert np.array_equal(sender(_request()).as_numpy("EMBEDDING"), VECTOR)  # type: ignore[arg-type]
        assert answered == [("/v2/models/m/infer", _request().header_length)] * 3  # type: ignore[attr-defined]
        # one connection held at a time: the closed one was dropped, not leaked
        assert [c.is_open for c in sender._connections] == [True]
        sender.close()
        assert sender._connections == []


@pytest.mark.parametrize("mode", ["keep", "idle-close"])
def test_async_sender_answers_every_call_and_reopens_a_closed_connection(mode: str) -> None:
    async def three_calls(url: str) -> list[np.ndarray]:
        sender = AsyncHttpSender(url, timeout_s=5)
        try:
            answers = []
            for _ in range(3):
                answers.append((await sender(_request())).as_numpy("EMBEDDING"))  # type: ignore[arg-type]
            return answers
        finally:
            await sender.close()

    answered: list[tuple[str, int]] = []
    with stand_in(mode, answered) as url:
        answers = asyncio.run(three_calls(url))
    assert len(answers) == len(answered) == 3
    assert all(np.array_equal(answer, VECTOR) for answer in answers)


def test_no_server_and_no_answer_map_to_typed_errors() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(OSError) as refused:
        HttpSender(f"127.0.0.1:{closed_port}", timeout_s=5)(_request())  # type: ignore[arg-type]
    assert isinstance(from_triton_exception(refused.value), ServerUnavailable)
    with stand_in("hang") as url:
        sender = HttpSender(url, timeout_s=0.3)
        with pytest.raises(TimeoutError) as late:
            sender(_request())  # type: ignore[arg-type]
        assert isinstance(from_triton_exception(late.value), RequestTimeout)
        assert [c.is_open for c in sender._connections] == [False]  # a connection left mid-answer is not reused

        async def late_async() -> None:
            sender = AsyncHttpSender(url, timeout_s=0.3)
            try:
                await sender(_request())  # type: ignore[arg-type]
            finally:
                await sender.close()

        with pytest.raises(TimeoutError) as late_aio:
            asyncio.run(late_async())
        assert isinstance(from_triton_exception(late_aio.value), RequestTimeout)
