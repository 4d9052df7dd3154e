"""client/grpc_inference.py: the request bytes are tritonclient's, byte for byte."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as tc
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import serialize_byte_tensor

from bge_triton.client.grpc_inference import infer_request
from bge_triton.client.raw_tensors import raw_contents


def test_bytes_and_int64_contents_equal_tritonclients() -> None:
    texts = np.empty((3, 1), dtype=np.object_)
    texts[:, 0] = ["héllo wörld".encode(), b"", "中文文本".encode()]
    assert raw_contents(texts, "BYTES") == serialize_byte_tensor(texts).item()
    ids = np.array([[0, 101, 2**40], [7, -1, -1]], dtype=np.int64)
    assert raw_contents(ids, "INT64") == ids.astype("<i8").tobytes()


def test_the_request_message_equals_the_one_tritonclient_builds() -> None:
    texts = np.empty((2, 1), dtype=np.object_)
    texts[:, 0] = [b"passage: one", "二".encode()]
    ours = infer_request("m", "TEXT", "BYTES", texts, ("EMBEDDING", "TOKEN_COUNT"))
    tensor = tc.InferInput("TEXT", [2, 1], "BYTES")
    tensor.set_data_from_numpy(texts)
    outputs = [tc.InferRequestedOutput(name) for name in ("EMBEDDING", "TOKEN_COUNT")]
    theirs = _get_inference_request(
        model_name="m", inputs=[tensor], model_version="", request_id="", outputs=outputs, sequence_id=0,
        sequence_start=False, sequence_end=False, priority=0, timeout=None, parameters=None,
    )  # fmt: skip
    assert ours == theirs
