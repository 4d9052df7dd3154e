"""`embedding_type` (int8, uint8, binary, ubinary) through a real proxy + tritonserver serving all-MiniLM-L6-v2:
equal to sentence-transformers' `quantize_embeddings` with the same (fixed) ranges, in JSON and base64, after
`dimensions`, and independent of the other texts of the request."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from bge_triton.client.proxy.vector_encoding import decode_row, int8_ranges, quantize
from bge_triton.launcher import TritonOptions, free_port

if TYPE_CHECKING:
    from conftest import Service

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["今天天气很好", "The weather is nice today", "股市今天大跌", "A cat sleeps on the mat", "你好"]
TYPES = ("int8", "uint8", "binary", "ubinary")


@pytest.fixture(scope="module")
def proxy(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(["serve-proxy", "--triton-url", triton.http_url, "--port", str(port)], port=port, ready_path="/ready")


def _post(proxy: Service, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _floats(proxy: Service, texts: list[str], dimensions: int | None = None) -> np.ndarray:
    """The float vectors, exactly (base64 little-endian float32)."""
    body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    data = _post(proxy, **body)["data"]
    return np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])


@pytest.mark.parametrize("dimensions", [None, 100])
@pytest.mark.parametrize("embedding_type", TYPES)
def test_equal_to_quantize_embeddings_in_json_and_base64(
    proxy: Service, embedding_type: str, dimensions: int | None
) -> None:
    floats = _floats(proxy, TEXTS, dimensions)
    dim = floats.shape[1]
    assert dim == (dimensions or 384)
    expected = quantize_embeddings(floats, embedding_type, ranges=int8_ranges(dim))
    body: dict[str, Any] = {"input": TEXTS, "embedding_type": embedding_type}
    if dimensions is not None:
        body["dimensions"] = dimensions
    as_json = _post(proxy, **body)["data"]
    as_base64 = _post(proxy, **body, encoding_format="base64")["data"]
    for i in range(len(TEXTS)):
        row_json = decode_row(as_json[i]["embedding"], embedding_type)  # type: ignore[arg-type]
        row_b64 = decode_row(as_base64[i]["embedding"], embedding_type)  # type: ignore[arg-type]
        assert all(isinstance(v, int) for v in as_json[i]["embedding"])
        assert row_json.dtype == expected.dtype
        assert np.array_equal(row_json, expected[i]) and np.array_equal(row_b64, expected[i]), (i, embedding_type)
    width = dim if embedding_type.endswith("int8") else -(-dim // 8)  # 100 dimensions: 13 bytes of bits
    assert expected.shape == (len(TEXTS), width)


def test_quantised_values_do_not_depend_on_the_batch(proxy: Service) -> None:
    """quantize_embeddings' own default (ranges from the batch) would give a text other bytes in other company."""
    alone = _post(proxy, input=TEXTS[0], embedding_type="int8")["data"][0]["embedding"]
    together = _post(proxy, input=TEXTS, embedding_type="int8")["data"][0]["embedding"]
    assert alone == together
    floats = _floats(proxy, TEXTS)
    batch_ranges = quantize_embeddings(floats, "int8")[0].tolist()  # what a per-request calibration would send
    assert batch_ranges != together


def test_quantised_vectors_keep_the_ranking() -> None:
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((200, 384)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    query = docs[:20] + 0.05 * rng.standard_normal((20, 384)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    q8, d8 = quantize(query, "int8").astype(np.int32), quantize(docs, "int8").astype(np.int32)
    assert (np.argmax(q8 @ d8.T, axis=1) == np.arange(20)).all()
    qb, db = quantize(query, "ubinary"), quantize(docs, "ubinary")
    hamming = np.unpackbits(qb[:, None, :] ^ db[None, :, :], axis=-1).sum(axis=-1)
    assert (np.argmin(hamming, axis=1) == np.arange(20)).all()


def test_unknown_embedding_type_is_a_400(proxy: Service) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": "x", "embedding_type": "int4"}, timeout=30
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "embedding_type"


def test_the_client_library_quantises_as_the_proxy_does(proxy: Service, triton: TritonOptions) -> None:
    """`bge_triton.client.quantize` / `first_dimensions` on the client library's vectors give the proxy's
    `embedding_type` + `dimensions` (equal to within one level where a component sits on a level's edge: the
    two requests may run in batches of other sizes)."""
    from bge_triton.client import EmbeddingClient, first_dimensions
    from bge_triton.client import quantize as client_quantize

    with EmbeddingClient(triton.grpc_url, "grpc", MODEL) as client:
        vectors = client.embed(TEXTS)
    ours = client_quantize(first_dimensions(vectors, 100), "int8")
    expected = quantize_embeddings(first_dimensions(vectors, 100), "int8", ranges=int8_ranges(100))
    assert ours.dtype == np.int8 and np.array_equal(ours, expected)
    served = _post(proxy, input=TEXTS, embedding_type="int8", dimensions=100, encoding_format="base64")["data"]
    rows = np.stack([decode_row(d["embedding"], "int8") for d in served]).astype(np.int32)
    assert rows.shape == ours.shape
    assert np.abs(rows - ours.astype(np.int32)).max() <= 1 and (rows == ours).mean() >= 0.99
