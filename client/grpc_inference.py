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

from collections.abc import Sequence

import grpc
import numpy as np
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

from .raw_tensors import raw_contents

# What tritonclient's clients allow (its MAX_GRPC_MESSAGE_SIZE): ColBERT vectors of a full batch pass 4 MB.
MAX_MESSAGE_BYTES = 2**31 - 1
# No retry machinery in the channel: Triton's service config sets no retry policy, and the machinery cost 0.11-0.15 ms
# of CPU and ~0.2 ms of a single query per call, sync and grpc.aio (bench/results/2026-12-02-issue19-grpc-channel-
# options.json, -async-triton-calls.json). A call that fails before it reached the server (what gRPC's transparent
# retry covered) is ServerUnavailable, which the client retries itself.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
]


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


class GrpcSender:
    """Sends ModelInferRequests on a channel of its own; tritonclient's InferResult back."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._channel = grpc.insecure_channel(url, options=CHANNEL_OPTIONS)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.timeout_s = timeout_s

    def __call__(self, request: service_pb2.ModelInferRequest) -> InferResult:
        return InferResult(self._stub.ModelInfer(request, timeout=self.timeout_s))

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcSender:
    """GrpcSender for asyncio: made inside the event loop that will use it (grpc.aio binds to the running loop)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._channel = grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.timeout_s = timeout_s

    async def __call__(self, request: service_pb2.ModelInferRequest) -> InferResult:
        return InferResult(await self._stub.ModelInfer(request, timeout=self.timeout_s))

    async def model_ready(self, model: str) -> bool:
        answer = await self._stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=self.timeout_s)
        return bool(answer.ready)

    def reset(self) -> None:
        """Nothing to close: a Triton shutting down ends its gRPC calls itself (AsyncHttpSender.reset)."""

    async def close(self) -> None:
        await self._channel.close()
