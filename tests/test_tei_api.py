"""TEI's API (`/embed`, `/embed_all`, `/similarity`, `/info`, `/decode`, `POST /`) against a real tritonserver +
proxy serving all-MiniLM-L6-v2: the TEI clients unmodified (huggingface_hub's InferenceClient, LlamaIndex's
TextEmbeddingsInference, Haystack's HuggingFaceAPITextEmbedder) give the vectors `/v1/embeddings` gives, and
errors come in TEI's shape and statuses."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from bge_triton.launcher import TritonOptions, free_port

if TYPE_CHECKING:
    from conftest import Service

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["The cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
TAIL = "the quick brown fox jumps over the lazy dog at the very end"


@pytest.fixture(scope="module")
def proxy(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(["serve-proxy", "--triton-url", triton.http_url, "--port", str(port)], port=port, ready_path="/ready")


def _post(proxy: Service, path: str, body: object) -> httpx.Response:
    if isinstance(body, str):  # raw JSON text (a lone surrogate escape, which httpx's json= cannot encode)
        return httpx.post(f"{proxy.url}{path}", content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(f"{proxy.url}{path}", json=body, timeout=60)


def _openai(proxy: Service, texts: list[str]) -> np.ndarray:
    response = _post(proxy, "/v1/embeddings", {"model": MODEL, "input": texts})
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def _tei_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return str(body["error"])


def test_embed_gives_the_openai_vectors(proxy: Service) -> None:
    expected = _openai(proxy, TEXTS)
    batch = _post(proxy, "/embed", {"inputs": TEXTS})
    assert batch.status_code == 200, batch.text
    assert int(batch.headers["x-compute-tokens"]) > len(TEXTS)
    np.testing.assert_allclose(np.array(batch.json(), dtype=np.float32), expected, atol=1e-5)
    single = _post(proxy, "/embed", {"inputs": TEXTS[0], "truncation_direction": "right"})
    assert np.array(single.json()).shape == (1, 384)
    np.testing.assert_allclose(single.json()[0], expected[0], atol=1e-5)
    short = np.array(_post(proxy, "/embed", {"inputs": TEXTS, "dimensions": 64}).json())
    cut = expected[:, :64] / np.linalg.norm(expected[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, cut, atol=1e-5)
    root = _post(proxy, "/", {"inputs": TEXTS})  # TEI's POST / of an embedding model is /embed
    np.testing.assert_allclose(np.array(root.json()), expected, atol=1e-5)


def test_huggingface_hub_inference_client(proxy: Service) -> None:
    from huggingface_hub import InferenceClient

    expected = _openai(proxy, TEXTS)
    client = InferenceClient(model=proxy.url)
    vector = client.feature_extraction(TEXTS[0])
    np.testing.assert_allclose(np.asarray(vector).reshape(-1), expected[0], atol=1e-5)
    scores = client.sentence_similarity(TEXTS[0], other_sentences=TEXTS[1:])
    np.testing.assert_allclose(scores, expected[1:] @ expected[0], atol=1e-5)
    assert scores[0] > scores[1]  # the kitten sentence is closer than the stock market one


def test_llamaindex_text_embeddings_inference(proxy: Service) -> None:
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    embedder = TextEmbeddingsInference(model_name=MODEL, base_url=proxy.url, timeout=60)
    vectors = np.array(embedder.get_text_embedding_batch(TEXTS), dtype=np.float32)
    np.testing.assert_allclose(vectors, _openai(proxy, TEXTS), atol=1e-5)


def test_haystack_text_embedder_in_tei_mode(proxy: Service) -> None:
    os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"
    from haystack_integrations.components.embedders.huggingface_api import HuggingFaceAPITextEmbedder

    expected = _openai(proxy, TEXTS[:1])[0]
    embedder = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params={"url": proxy.url})
    raw = np.array(embedder.run(text=TEXTS[0])["embedding"], dtype=np.float32)  # Haystack's default normalize=False
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.05  # the mean-pooled vector itself, as TEI answers
    np.testing.assert_allclose(raw / np.linalg.norm(raw), expected, atol=1e-5)
    unit = HuggingFaceAPITextEmbedder(
        api_type="text_embeddings_inference", api_params={"url": proxy.url}, normalize=True
    ).run(text=TEXTS[0])["embedding"]
    np.testing.assert_allclose(unit, expected, atol=1e-5)


def test_similarity_shape(proxy: Service) -> None:
    expected = _openai(proxy, TEXTS)
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}, "parameters": {"truncate": True}}
    for path in ("/similarity", "/"):
        response = _post(proxy, path, body)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json(), expected[1:] @ expected[0], atol=1e-5)


def test_embed_all_is_every_token_state(proxy: Service) -> None:
    tokens = _post(proxy, "/tokenize", {"inputs": TEXTS[:2]}).json()
    response = _post(proxy, "/embed_all", {"inputs": TEXTS[:2]})
    assert response.status_code == 200, response.text
    states = response.json()
    assert [len(s) for s in states] == [len(t) for t in tokens]  # one vector per token, [CLS] and [SEP] too
    assert {len(v) for s in states for v in s} == {384}
    pooled = np.array([np.mean(s, axis=0) for s in states])  # MiniLM pools by the mean
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, _openai(proxy, TEXTS[:2]), atol=1e-5)


def test_info_reads_like_tei(proxy: Service) -> None:
    response = httpx.get(f"{proxy.url}/info", timeout=30)
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["model_id"].endswith("all-MiniLM-L6-v2") and info["served_model_name"] == MODEL
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["model_dtype"] == "float32" and info["max_input_length"] == 256
    assert info["max_client_batch_size"] == 2048 and info["auto_truncate"] is True
    assert isinstance(info["version"], str) and isinstance(info["max_batch_tokens"], int)


def test_left_truncation_keeps_the_end(proxy: Service) -> None:
    long = "hello " * 400 + TAIL
    window = 256 - 2  # [CLS] ... [SEP]
    tail_tokens = len(_post(proxy, "/tokenize", {"inputs": TAIL, "add_special_tokens": False}).json()[0])
    # the embedding service's START: the text's tail as text, the most that fits (a token or two under the window)
    tails = ["hello " * (window - tail_tokens - k) + TAIL for k in range(4)]  # "hello" is one token
    left = np.array(_post(proxy, "/embed", {"inputs": long, "truncation_direction": "Left"}).json()[0])
    right = np.array(_post(proxy, "/embed", {"inputs": long, "truncation_direction": "right"}).json()[0])
    *expected_tails, expected_right = _openai(proxy, [*tails, "hello " * window])
    assert min(float(np.abs(left - t).max()) for t in expected_tails) < 1e-5
    np.testing.assert_allclose(right, expected_right, atol=1e-5)
    assert float(left @ right) < 0.99  # the two ends differ


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type", "fragment"),
    [
        ("/embed", {"inputs": []}, 400, "Empty", "cannot be empty"),
        ("/embed", {"inputs": "hello " * 400, "truncate": False}, 422, "Validation", "256"),
        ("/embed", {"inputs": "x", "truncation_direction": "middle"}, 422, "Validation", "truncation_direction"),
        ("/embed", {"inputs": ["x", 1]}, 422, "Validation", "inputs"),
        ("/embed", {"inputs": "x", "prompt_name": "nope"}, 422, "Validation", "prompt_name"),
        ("/embed", {"inputs": "x", "dimensions": 9999}, 422, "Validation", "dimensions"),
        ("/embed", {"inputs": ["x"] * 2049}, 422, "Validation", "batch size 2049"),
        ("/embed", {"inputs": "x", "model": "no-such-model"}, 404, "Validation", "does not exist"),
        ("/embed_all", {"inputs": []}, 400, "Empty", "cannot be empty"),
        ("/embed_all", '{"inputs": ["ok", "\\ud800"]}', 422, "Validation", "surrogate"),
        ("/embed_all", {"inputs": [[101, 2**63]]}, 422, "Validation", "token id"),
        ("/embed", {"inputs": [[101, 2**63]], "normalize": False}, 422, "Validation", "token id"),
        ("/embed_all", {"inputs": "hello " * 400, "truncate": False}, 422, "Validation", "256"),
        ("/similarity", {"inputs": {"source_sentence": "x", "sentences": []}}, 400, "Empty", "sentences"),
        ("/similarity", {"inputs": {"source_sentence": "x"}}, 422, "Validation", "sentences"),
        ("/", [1, 2], 422, "Validation", "JSON object"),
    ],
)
def test_errors_in_tei_shape(proxy: Service, path: str, body: Any, status: int, error_type: str, fragment: str) -> None:
    message = _tei_error(_post(proxy, path, body), status, error_type)
    assert fragment in message


def test_rerank_body_at_root_without_a_reranker(proxy: Service) -> None:
    response = _post(proxy, "/", {"query": "q", "texts": ["a"]})  # TEI's rerank body: no reranker here
    assert response.status_code in (404, 422)  # 404 from the TEI routes, 422 once rerank routes answer it
    assert "reranker" in _tei_error(response, response.status_code, "Validation")


def test_openai_routes_keep_openai_errors(proxy: Service) -> None:
    response = _post(proxy, "/v1/embeddings", {"model": MODEL, "input": []})
    assert response.status_code == 400
    assert set(response.json()["error"]) >= {"message", "type", "code"}


def test_decode_gives_the_text_back(proxy: Service) -> None:
    tokens = _post(proxy, "/tokenize", {"inputs": TEXTS[:2]}).json()
    ids = [[t["id"] for t in row] for row in tokens]
    response = _post(proxy, "/decode", {"ids": ids})
    assert response.status_code == 200, response.text
    assert response.json() == [t.lower() for t in TEXTS[:2]]  # MiniLM's tokenizer lower-cases
    with_special = _post(proxy, "/decode", {"ids": ids[0], "skip_special_tokens": False}).json()
    assert with_special == ["[CLS] " + TEXTS[0].lower() + " [SEP]"]
    for body, status, error_type in (
        ({"ids": []}, 400, "Empty"),
        ({"ids": [[1, 2], [-1]]}, 422, "Validation"),
        ({"ids": [10**9]}, 422, "Validation"),  # outside the vocabulary: the tokenize model's INVALID_ARG
    ):
        _tei_error(_post(proxy, "/decode", body), status, error_type)


def test_tokenize_takes_tei_prompt_name(proxy: Service) -> None:
    plain = _post(proxy, "/tokenize", {"inputs": "hello", "prompt_name": "passage"})
    assert plain.status_code == 200 and [t["text"] for t in plain.json()[0]] == ["[CLS]", "hello", "[SEP]"]
    bad = _post(proxy, "/tokenize", {"inputs": "hello", "prompt_name": "nope"})
    assert bad.status_code == 400 and "prompt_name" in bad.json()["error"]["message"]  # /tokenize: OpenAI errors


def test_embed_sparse_takes_tei_prompt_name(proxy: Service) -> None:
    bad = _post(proxy, "/embed_sparse", {"inputs": "x", "prompt_name": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt_name"
    good = _post(proxy, "/embed_sparse", {"inputs": "x", "model": MODEL, "prompt_name": "query"})  # no m3 heads
    assert good.status_code == 400 and good.json()["error"]["code"] == "model_not_supported"


def test_overload_and_unavailable_triton_in_each_family_s_shape() -> None:
    """In-process (no Triton listens on the port): 429 Overloaded and 503 Unhealthy with Retry-After on TEI's
    routes, OpenAI's error JSON for the same failures on /v1/embeddings."""
    from fastapi.testclient import TestClient

    from bge_triton.client.proxy.app import create_app
    from bge_triton.client.proxy.settings import ProxySettings

    nowhere = (f"127.0.0.1:{free_port()}",)
    full = TestClient(create_app(ProxySettings(triton_urls=nowhere, max_in_flight=0, retry_after_s=3)))
    tei = full.post("/embed", json={"inputs": "x"})
    assert (tei.status_code, tei.headers["retry-after"]) == (429, "3")
    assert tei.json()["error_type"] == "Overloaded"
    openai = full.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "overloaded"

    down = TestClient(create_app(ProxySettings(triton_urls=nowhere)))
    tei = down.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b"]}})
    assert (tei.status_code, tei.json()["error_type"]) == (503, "Unhealthy") and "retry-after" in tei.headers
    openai = down.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert openai.status_code == 503 and openai.json()["error"]["code"] == "triton_unavailable"
