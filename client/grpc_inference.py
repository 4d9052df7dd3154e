"""Embedding requests over gRPC as KServe v2 protobuf messages, built directly.

tritonclient's `infer()` wraps each input in an `InferInput`, serialises it through numpy object arrays and
checks every argument; for a RAG query's one short text that Python work cost ~0.2 ms of CPU per call on this
project's 2-core VM, and the client library's own tensor objects as much again (issue 19, docs/benchmarks.md).
Here the request message is filled in one pass from the chunk the client planned (BYTES: 4-byte little-endian
length + UTF-8 bytes per element, tritonclient's own layout; INT64: the array's bytes) and sent through
tritonclient's generated stub on a channel of our own. Answers are read by tritonclient's `InferResult`, and a
failed call raises `grpc.RpcError`, which `errors.from_triton_exception` maps as it maps tritonclient's errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

# What tritonclient's clients allow (its MAX_GRPC_MESSAGE_SIZE): ColBERT vectors of a full batch pass 4 MB.
MAX_MESSAGE_BYTES = 2**31 - 1
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
_NUMPY_TYPES = {"INT64": np.dtype("<i8"), "INT32": np.dtype("<i4"), "FP32": np.dtype("<f4")}


def raw_contents(chunk: np.ndarray, datatype: str) -> bytes:
    """`chunk` as Triton's raw input bytes (row-major)."""
    if datatype == "BYTES":
        return b"".join(len(item).to_bytes(4, "little") + item for item in map(_as_bytes, chunk.flat))
    return np.ascontiguousarray(chunk, dtype=_NUMPY_TYPES[datatype]).tobytes()


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode("utf-8")


def infer_request(
    model: str, input_name: str, datatype: str, chunk: np.ndarray, outputs: Sequence[str]
) -> service_pb2.ModelInferRequest:
    """One ModelInferRequest: `chunk` as the only input, `outputs` asked for by name."""
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name = input_name
    tensor.datatype = datatype
    tensor.shape.extend(chunk.shape)
    request.raw_input_contents.append(raw_contents(chunk, datatype))
    for name in outputs:
        request.outputs.add().name = name
    return request


def sync_channel(url: str) -> grpc.Channel:
    return grpc.insecure_channel(url, options=CHANNEL_OPTIONS)


def aio_channel(url: str) -> grpc.aio.Channel:
    """Made inside the event loop that will use it (grpc.aio binds to the running loop)."""
    return grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)


def message_sender(channel: grpc.Channel | grpc.aio.Channel, timeout_s: float) -> Callable[[Any], Any]:
    """request -> tritonclient's InferResult (sync channel) or a coroutine of it (asyncio channel)."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    if isinstance(channel, grpc.aio.Channel):

        async def send_async(request: service_pb2.ModelInferRequest) -> InferResult:
            return InferResult(await stub.ModelInfer(request, timeout=timeout_s))

        return send_async

    def send(request: service_pb2.ModelInferRequest) -> InferResult:
        return InferResult(stub.ModelInfer(request, timeout=timeout_s))

    return send
