"""The ensemble served by a real tritonserver equals the PyTorch reference."""

from __future__ import annotations

import concurrent.futures as cf
import random
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bge_triton.export.parity import TorchReference, cosine_rows
from bge_triton.launcher import TritonOptions

MODEL = "all-MiniLM-L6-v2"


def _infer(client: grpcclient.InferenceServerClient, texts: list[str] | list[bytes]) -> dict[str, np.ndarray]:
    data = np.array([[t.encode("utf-8") if isinstance(t, str) else t] for t in texts], dtype=object)
    inp = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    result = client.infer(MODEL, [inp])
    return {name: result.as_numpy(name) for name in ("EMBEDDING", "TOKEN_COUNT", "FULL_TOKEN_COUNT")}


@pytest.fixture(scope="module")
def client(triton: TritonOptions) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(triton.grpc_url)


def _texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = ["向量", "检索", "模型", "服务", "embedding", "search", "Triton", "latency", "北京", "上海", "token", "🙂"]
    return [f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for i in range(n)]


@pytest.mark.parametrize(
    "texts",
    [
        ["今天天气很好"],
        ["The quick brown fox jumps over the lazy dog."],
        ["短", "A somewhat longer English sentence with more tokens in it.", "中文和English混合的句子，长度不同。" * 5],
    ],
    ids=["single-zh", "single-en", "mixed-lengths"],
)
def test_matches_pytorch_reference(client, reference: TorchReference, texts: list[str]) -> None:
    out = _infer(client, texts)
    assert out["EMBEDDING"].shape == (len(texts), 384) and out["EMBEDDING"].dtype == np.float32
    assert cosine_rows(out["EMBEDDING"], reference.embed(texts)).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(out["EMBEDDING"], axis=1), 1.0, atol=1e-5)
    assert out["TOKEN_COUNT"].ravel().tolist() == reference.token_counts(texts)


def test_order_preserved_for_1000_texts_over_many_concurrent_batches(client, reference: TorchReference) -> None:
    texts = _texts(1000)
    chunks = [texts[i : i + 37] for i in range(0, len(texts), 37)]  # odd size: batches merge across requests
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda chunk: _infer(client, chunk)["EMBEDDING"], chunks))
    vectors = np.concatenate(results)
    expected = reference.embed(texts, batch_size=64)
    cos = cosine_rows(vectors, expected)
    assert cos.min() >= 0.9999, f"worst row {int(cos.argmin())}: {cos.min()}"


def test_concurrent_requests_of_different_lengths_are_not_mixed_up(client, reference: TorchReference) -> None:
    """Ragged batching re-pads requests of different lengths inside one encoder call."""
    texts = [("词" * n) + f" #{n}" for n in range(1, 400, 13)]
    with cf.ThreadPoolExecutor(16) as pool:
        vectors = list(pool.map(lambda t: _infer(client, [t])["EMBEDDING"][0], texts))
    assert cosine_rows(np.stack(vectors), reference.embed(texts)).min() >= 0.9999


def test_over_length_text_truncated_to_the_window(client, reference: TorchReference) -> None:
    texts = ["长文本" * 400, "word " * 300]
    out = _infer(client, texts)
    assert out["TOKEN_COUNT"].ravel().tolist() == [256, 256] == reference.token_counts(texts)
    assert out["FULL_TOKEN_COUNT"].ravel().tolist() == [1202, 302]
    assert cosine_rows(out["EMBEDDING"], reference.embed(texts)).min() >= 0.9999


@pytest.mark.parametrize(
    "text", ["", "   ", "\n\t", "🎉🎉🎉", "😀"], ids=["empty", "spaces", "whitespace", "emoji3", "emoji1"]
)
def test_degenerate_texts_have_a_defined_vector(client, reference: TorchReference, text: str) -> None:
    out = _infer(client, [text])
    assert np.isfinite(out["EMBEDDING"]).all()
    assert abs(float(np.linalg.norm(out["EMBEDDING"][0])) - 1.0) < 1e-5
    assert cosine_rows(out["EMBEDDING"], reference.embed([text])).min() >= 0.9999
    assert out["TOKEN_COUNT"].ravel().tolist() == reference.token_counts([text])


@pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b"ok \xff\xfe", b"\xc3"], ids=["surrogate", "bad-bytes", "truncated"])
def test_invalid_utf8_is_a_triton_error_and_the_server_keeps_serving(client, raw: bytes) -> None:
    with pytest.raises(InferenceServerException, match="not valid UTF-8") as caught:
        _infer(client, ["fine", raw])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert _infer(client, ["still serving"])["EMBEDDING"].shape == (1, 384)


def test_wrong_shape_is_rejected_by_triton(client) -> None:
    data = np.array([[b"a", b"b"]], dtype=object)
    inp = grpcclient.InferInput("TEXT", [1, 2], "BYTES")
    inp.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer(MODEL, [inp])


def test_http_protocol_and_metadata(triton: TritonOptions, reference: TorchReference) -> None:
    http = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    assert http.is_model_ready(MODEL)
    config = http.get_model_config(MODEL)
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params["dim"] == "384" and params["pooling"] == "mean" and params["max_tokens"] == "256"
    data = np.array([["你好，世界".encode()]], dtype=object)
    inp = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    inp.set_data_from_numpy(data)
    vector = http.infer(MODEL, [inp]).as_numpy("EMBEDDING")
    assert cosine_rows(vector, reference.embed(["你好，世界"])).min() >= 0.9999


def test_metrics_endpoint_counts_inferences(triton: TritonOptions, client) -> None:
    _infer(client, ["count me"])
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as resp:
        body = resp.read().decode()
    assert f'nv_inference_request_success{{model="{MODEL}",version="1"}}' in body


def _infer_ids(client: grpcclient.InferenceServerClient, rows: list[list[int]]) -> dict[str, np.ndarray]:
    width = max(len(r) for r in rows)
    data = np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int64)
    inp = grpcclient.InferInput("TOKEN_IDS", list(data.shape), "INT64")
    inp.set_data_from_numpy(data)
    result = client.infer(f"{MODEL}-ids", [inp])
    return {name: result.as_numpy(name) for name in ("EMBEDDING", "TOKEN_COUNT", "FULL_TOKEN_COUNT")}


def test_token_ids_embed_like_their_text(client, reference: TorchReference) -> None:
    texts = ["hello world", "今天天气很好", "a longer sentence " * 200]
    plain = [reference.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    with_specials = reference.tokenizer(texts[0])["input_ids"]  # [CLS] ... [SEP] given: not doubled
    out = _infer_ids(client, [*plain, with_specials])
    expected = reference.embed([*texts, texts[0]])
    assert cosine_rows(out["EMBEDDING"], expected).min() >= 0.9999
    assert out["TOKEN_COUNT"].ravel().tolist() == reference.token_counts([*texts, texts[0]])
    assert out["FULL_TOKEN_COUNT"].ravel().tolist()[2] == len(plain[2]) + 2


@pytest.mark.parametrize(
    ("rows", "message"),
    [([[30522]], "outside the vocabulary"), ([[-7]], "outside the vocabulary"), ([[5, -1, 6]], "padding before")],
)
def test_bad_token_ids_are_invalid_argument(client, rows: list[list[int]], message: str) -> None:
    with pytest.raises(InferenceServerException, match=message) as caught:
        _infer_ids(client, rows)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
