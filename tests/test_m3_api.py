"""bge-m3 through the proxy and the client library: /embed_sparse, /embed_colbert, /v1/similarity, scores.

Against a real tritonserver serving the tiny random-init bge-m3 export (`m3_triton`), compared with
FlagEmbedding's `BGEM3FlagModel` on the same checkpoint.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import openai
import pytest

from bge_triton.client import EmbeddingClient, InvalidInput
from bge_triton.client.m3_scoring import M3Weights, colbert_score, lexical_matching_score
from bge_triton.launcher import TritonOptions, free_port

if TYPE_CHECKING:
    from conftest import Service

QUERY = "如何部署向量模型？"
PASSAGES = ["用 Triton 部署嵌入模型", "The weather is nice today", "向量模型 deployment with Triton and nginx 🚀"]
WEIGHTS = [0.4, 0.2, 0.4]  # the bge-m3 model card's dense, sparse, ColBERT weights
WEIGHTS_BODY = {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}


@pytest.fixture(scope="module")
def m3_proxy(m3_triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(["serve-proxy", f"--triton-url=http://127.0.0.1:{m3_triton.http_port}", "--port", str(port)],
                 port=port, ready_path="/ready")  # fmt: skip


@pytest.fixture(scope="module")
def flag_model(m3_checkpoint: Path) -> Any:
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(m3_checkpoint), use_fp16=False, devices="cpu")


@pytest.fixture(scope="module")
def reference(flag_model: Any) -> dict[str, Any]:
    return flag_model.encode(PASSAGES, return_dense=True, return_sparse=True, return_colbert_vecs=True)


def _model(proxy: Service) -> str:
    (card,) = [c for c in httpx.get(f"{proxy.url}/v1/models", timeout=10).json()["data"] if c["parent"] is None]
    return str(card["id"])


def test_dense_is_the_openai_contract(m3_proxy: Service, reference: dict[str, Any]) -> None:
    sdk = openai.OpenAI(base_url=f"{m3_proxy.url}/v1", api_key="x")
    response = sdk.embeddings.create(model=_model(m3_proxy), input=PASSAGES)
    got = np.array([d.embedding for d in response.data])
    cos = (got * reference["dense_vecs"]).sum(1) / np.linalg.norm(reference["dense_vecs"], axis=1)
    assert cos.min() >= 0.9999, cos


def test_embed_sparse_matches_flagembedding(m3_proxy: Service, reference: dict[str, Any]) -> None:
    body = {"inputs": PASSAGES}  # no model: the only bge-m3 served
    rows = httpx.post(f"{m3_proxy.url}/embed_sparse", json=body, timeout=60).json()
    assert len(rows) == len(PASSAGES)
    for row, expected in zip(rows, reference["lexical_weights"], strict=True):
        got = {item["index"]: item["value"] for item in row}
        want = {int(k): float(v) for k, v in expected.items()}
        assert set(got) == set(want) and want
        assert max(abs(got[t] - want[t]) for t in want) <= 1e-4
    b64 = httpx.post(f"{m3_proxy.url}/embed_sparse", json={**body, "encoding_format": "base64"}, timeout=60).json()
    for row, packed in zip(rows, b64, strict=True):
        ids = np.frombuffer(base64.b64decode(packed["indices"]), "<i4")
        values = np.frombuffer(base64.b64decode(packed["values"]), "<f4")
        assert ids.tolist() == [item["index"] for item in row]
        np.testing.assert_allclose(values, [item["value"] for item in row], atol=1e-6)


def test_embed_colbert_matches_flagembedding(m3_proxy: Service, reference: dict[str, Any]) -> None:
    body = {"inputs": PASSAGES, "model": _model(m3_proxy)}
    rows = httpx.post(f"{m3_proxy.url}/embed_colbert", json=body, timeout=60).json()
    b64 = httpx.post(f"{m3_proxy.url}/embed_colbert", json={**body, "encoding_format": "base64"}, timeout=60).json()
    for row, packed, expected in zip(rows, b64, reference["colbert_vecs"], strict=True):
        got = np.array(row, dtype=np.float32)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4)
        decoded = np.frombuffer(base64.b64decode(packed["data"]), "<f4").reshape(packed["shape"])
        np.testing.assert_array_equal(decoded, got)


def test_similarity_matches_flagembedding_compute_score(m3_proxy: Service, flag_model: Any) -> None:
    body = {"query": QUERY, "passages": PASSAGES, "weights": WEIGHTS_BODY}
    response = httpx.post(f"{m3_proxy.url}/v1/similarity", json=body, timeout=60)
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["usage"]["prompt_tokens"] > len(PASSAGES) and [d["index"] for d in got["data"]] == [0, 1, 2]
    expected = flag_model.compute_score([(QUERY, p) for p in PASSAGES], weights_for_different_modes=WEIGHTS)
    for key, ours in (("dense", "dense"), ("sparse", "sparse"), ("colbert", "colbert"),
                      ("sparse+dense", "sparse+dense"), ("colbert+sparse+dense", "hybrid")):  # fmt: skip
        np.testing.assert_allclose([d[ours] for d in got["data"]], expected[key], atol=1e-4, err_msg=key)


def test_client_library_scores_like_the_proxy(m3_triton: TritonOptions, m3_proxy: Service) -> None:
    with EmbeddingClient(m3_triton.grpc_url) as client:
        scores = client.score(QUERY, PASSAGES, weights=M3Weights(*WEIGHTS))
        m3 = client.embed_m3(PASSAGES)
        sparse = client.embed_sparse(PASSAGES)
        colbert = client.embed_colbert(PASSAGES)
        q = client.embed_m3(QUERY, query=True)
    body = {"query": QUERY, "passages": PASSAGES, "weights": WEIGHTS_BODY}
    proxy = httpx.post(f"{m3_proxy.url}/v1/similarity", json=body, timeout=60).json()["data"]
    np.testing.assert_allclose([s.hybrid for s in scores], [d["hybrid"] for d in proxy], atol=1e-6)
    assert sparse == m3.sparse and all(np.array_equal(a, b) for a, b in zip(colbert, m3.colbert or [], strict=True))
    assert q.sparse and q.colbert
    assert scores[1].sparse == pytest.approx(lexical_matching_score(q.sparse[0], sparse[1]))
    assert scores[2].colbert == pytest.approx(colbert_score(q.colbert[0], colbert[2]), abs=1e-6)


def test_m3_endpoints_reject_bad_requests(m3_proxy: Service) -> None:
    def post(path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{m3_proxy.url}{path}", json=body, timeout=30)

    for path, body, status in (
        ("/embed_sparse", {"inputs": []}, 400),
        ("/embed_sparse", {"inputs": [""]}, 400),
        ("/embed_colbert", {"inputs": "x", "model": "nope"}, 404),
        ("/embed_colbert", {"inputs": [1, 2]}, 400),
        ("/v1/similarity", {"query": "q", "passages": []}, 400),
        ("/v1/similarity", {"query": "q", "passages": ["p"], "weights": {"dense": -1}}, 400),
        ("/v1/similarity", {"query": "q", "passages": ["p"], "weights": {"dense": 0, "sparse": 0, "colbert": 0}}, 400),
        ("/v1/similarity", {"passages": ["p"]}, 400),
    ):
        response = post(path, body)
        assert response.status_code == status, (path, body, response.text)
        assert set(response.json()["error"]) >= {"message", "type", "code"}


def test_sparse_on_a_dense_only_model_is_a_typed_error(triton: TritonOptions) -> None:
    with EmbeddingClient(triton.grpc_url) as client, pytest.raises(InvalidInput, match="not a bge-m3"):
        client.embed_sparse(["x"])
