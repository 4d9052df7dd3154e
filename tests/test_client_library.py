"""The client library (`bge_triton.client`) against a real tritonserver and the PyTorch reference."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from bge_triton.client import (
    AsyncEmbeddingClient,
    EmbeddingClient,
    EmbeddingError,
    EmbeddingResult,
    InputTooLong,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
    from_triton_exception,
    list_models,
    list_models_async,
    with_instruction,
)
from bge_triton.export.parity import TorchReference, cosine_rows
from bge_triton.launcher import TritonOptions, free_port
from bge_triton.model_facts import ModelFacts

MODEL = "all-MiniLM-L6-v2"
N_TEXTS = 5000
BGE_ZH_QUERY = "为这个句子生成表示以用于检索相关文章："
MODES = [("sync", "grpc"), ("sync", "http"), ("async", "grpc"), ("async", "http")]
MODE_IDS = [f"{mode}-{protocol}" for mode, protocol in MODES]

# fmt: off
_EN = (
    "the", "a", "of", "search", "engine", "vector", "embedding", "model", "server", "latency", "throughput",
    "batch", "request", "query", "passage", "document", "index", "retrieval", "quick", "brown", "fox", "jumps",
    "over", "lazy", "dog", "river", "mountain", "city", "morning", "evening", "students", "teachers", "learn",
    "reading", "writing", "music", "garden", "coffee", "weather", "train", "station", "market", "price",
)
_ZH = (
    "向量", "检索", "模型", "服务", "今天", "天气", "很好", "我们", "一起", "公园", "散步", "北京",
    "上海", "城市", "学生", "老师", "学习", "音乐", "咖啡", "火车", "市场", "价格", "文章", "句子",
    "表示", "部署", "推理", "延迟", "吞吐", "批量", "请求", "查询", "文档", "索引",
)
# fmt: on
_PUNCT = ("", ".", "!", "?", "。", "，", "：")


def make_texts(n: int, seed: int = 20240611) -> list[str]:
    """Deterministic, varied texts: English, Chinese and mixed; mostly short (2-10 words, so that the
    PyTorch reference and four passes over 5,000 texts fit in a minute on 2 cores), 3% long (20-40 words)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        kind = rng.random()
        count = rng.randint(20, 40) if rng.random() < 0.03 else rng.randint(2, 10)
        if kind < 0.45:
            text = " ".join(rng.choice(_EN) for _ in range(count)).capitalize()
        elif kind < 0.8:
            text = "".join(rng.choice(_ZH) for _ in range(max(2, count // 2)))
        else:
            text = " ".join(rng.choice(_EN) if rng.random() < 0.5 else rng.choice(_ZH) for _ in range(count))
        texts.append(text + rng.choice(_PUNCT))
    return texts


@dataclasses.dataclass(frozen=True)
class Expected:
    texts: list[str]
    vectors: np.ndarray
    token_counts: list[int]


@pytest.fixture(scope="module")
def expected(reference: TorchReference) -> Expected:
    """The PyTorch reference on the 5,000 texts, computed once (sorted by length: little padding)."""
    texts = make_texts(N_TEXTS)
    counts = reference.token_counts(texts)
    order = sorted(range(len(texts)), key=lambda i: counts[i])
    sorted_vectors = reference.embed([texts[i] for i in order], batch_size=64)
    vectors = np.empty_like(sorted_vectors)
    vectors[order] = sorted_vectors
    return Expected(texts, vectors, counts)


def make_client(mode: str, protocol: str, triton: TritonOptions, **kwargs: Any) -> Any:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    cls = EmbeddingClient if mode == "sync" else AsyncEmbeddingClient
    return cls(url, protocol, **kwargs)


def run(mode: str, protocol: str, triton: TritonOptions, action: Callable[[Any], Any], **kwargs: Any) -> Any:
    """Runs `action(client)` with a fresh sync or asyncio client (awaiting it for the latter)."""
    client = make_client(mode, protocol, triton, **kwargs)
    if mode == "sync":
        with client:
            return action(client)

    async def main() -> Any:
        async with client:
            return await action(client)

    return asyncio.run(main())


# -- the 5,000 texts -----------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "protocol"), MODES, ids=MODE_IDS)
def test_5000_texts_equal_the_reference_in_order(
    mode: str, protocol: str, triton: TritonOptions, facts: ModelFacts, expected: Expected
) -> None:
    started = time.perf_counter()
    result: EmbeddingResult = run(mode, protocol, triton, lambda c: c.embed_with_usage(expected.texts))
    seconds = time.perf_counter() - started
    assert isinstance(result, EmbeddingResult) and len(result) == N_TEXTS
    assert result.vectors.shape == (N_TEXTS, facts.dim) and result.vectors.dtype == np.float32
    cosines = cosine_rows(result.vectors, expected.vectors)
    worst = int(cosines.argmin())
    assert cosines.min() >= 0.9999, f"row {worst} ({expected.texts[worst]!r}): cosine {cosines[worst]:.6f}"
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert result.token_counts.dtype == np.int64 and result.token_counts.tolist() == expected.token_counts
    # All texts fit the window: nothing was truncated.
    assert result.full_token_counts.tolist() == expected.token_counts
    print(f"{mode}-{protocol}: {N_TEXTS} texts in {seconds:.2f} s")


def test_sync_client_is_thread_safe(triton: TritonOptions, expected: Expected) -> None:
    """Several caller threads share one client (HTTP: gevent clients must not cross threads)."""
    slices = [slice(i * 150, (i + 1) * 150) for i in range(4)]
    results: dict[int, np.ndarray] = {}
    with EmbeddingClient(triton.http_url, "http", max_concurrency=2) as client:

        def work(k: int) -> None:
            results[k] = client.embed(expected.texts[slices[k]])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(slices))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(results) == list(range(len(slices)))
    for k, part in results.items():
        assert cosine_rows(part, expected.vectors[slices[k]]).min() >= 0.9999


# -- the model's facts, discovered from the server -------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_model_and_facts_come_from_the_config_parameters(
    protocol: str, triton: TritonOptions, facts: ModelFacts
) -> None:
    with make_client("sync", protocol, triton) as client:
        assert client.is_ready()
        assert client.model == MODEL  # the only model whose parameters carry model facts
        assert client.facts == facts
        assert client.max_batch_size == 64

    async def main() -> None:
        async with make_client("async", protocol, triton, model=MODEL) as client:
            assert await client.is_ready()
            assert await client.connect() == facts
            assert client.facts == facts and client.max_batch_size == 64

    asyncio.run(main())


def test_list_models_names_the_text_ensembles(triton: TritonOptions, facts: ModelFacts) -> None:
    # The repository also holds `-ids`, `-tokenizer`, `-encoder`, `-pooling` and `-tokenize` (which takes TEXT but
    # carries no model facts): only the ensemble is an embedding model.
    assert list_models(triton.grpc_url) == {MODEL: facts}
    assert asyncio.run(list_models_async(triton.http_url, "http")) == {MODEL: facts}


# -- token ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "protocol"), [("sync", "http"), ("async", "grpc")], ids=["sync-http", "async-grpc"])
def test_token_ids_embed_like_their_texts(
    mode: str, protocol: str, triton: TritonOptions, facts: ModelFacts, reference: TorchReference, expected: Expected
) -> None:
    texts = [*expected.texts[:80], " ".join(["embedding"] * 300)]  # two requests of up to 64
    with_special = reference.tokenizer(texts)["input_ids"]
    bare = reference.tokenizer(texts, add_special_tokens=False)["input_ids"]  # the server adds [CLS] ... [SEP]

    def both(client: Any) -> Any:
        pair = (client.embed_token_ids(with_special), client.embed_token_ids(bare))
        return asyncio.gather(*pair) if mode == "async" else pair

    for result in run(mode, protocol, triton, both):
        assert cosine_rows(result.vectors[:80], expected.vectors[:80]).min() >= 0.9999
        assert result.token_counts.tolist() == reference.token_counts(texts)
        assert result.full_token_counts[-1] == len(with_special[-1]) > facts.max_tokens
    with pytest.raises(InputTooLong) as caught:
        run(mode, protocol, triton, lambda c: c.embed_token_ids(bare, truncate=False))
    assert caught.value.index == len(texts) - 1
    with pytest.raises(InvalidInput, match="input 1 holds id"):
        run(mode, protocol, triton, lambda c: c.embed_token_ids([[101, 102], [101, facts.vocab_size, 102]]))


# -- instructions ------------------------------------------------------------------------------
def test_instruction_prefixing_in_isolation(facts: ModelFacts) -> None:
    bge_zh = dataclasses.replace(facts, query_instruction=BGE_ZH_QUERY, passage_instruction="")
    texts = ["今天天气很好", "How do I deploy Triton?"]
    assert with_instruction(texts, bge_zh, query=True) == [BGE_ZH_QUERY + t for t in texts]
    assert with_instruction(texts, bge_zh, query=False) == texts
    passages = dataclasses.replace(facts, passage_instruction="passage: ")
    assert with_instruction(texts, passages, query=False) == ["passage: " + t for t in texts]
    assert with_instruction([], bge_zh, query=True) == []


def test_query_embeddings_equal_the_reference_on_instruction_plus_text(
    triton: TritonOptions, facts: ModelFacts, reference: TorchReference, expected: Expected
) -> None:
    texts = expected.texts[:40]
    bge_zh = dataclasses.replace(facts, query_instruction=BGE_ZH_QUERY)
    with EmbeddingClient(triton.grpc_url) as client:
        # MiniLM has no instruction: query=True embeds facts.query_instruction + text.
        queries = client.embed(texts, query=True)
        assert cosine_rows(queries, reference.embed([facts.query_instruction + t for t in texts])).min() >= 0.9999
        # A prefixed text (as a bge-zh client would send it) goes through the server unchanged.
        prefixed = client.embed(with_instruction(texts, bge_zh, query=True))
    assert cosine_rows(prefixed, reference.embed([BGE_ZH_QUERY + t for t in texts])).min() >= 0.9999


# -- truncation --------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "protocol"), [("sync", "grpc"), ("async", "http")], ids=["sync-grpc", "async-http"])
def test_truncate_false_raises_input_too_long_for_the_first_overlong_input(
    mode: str, protocol: str, triton: TritonOptions, facts: ModelFacts, reference: TorchReference
) -> None:
    texts = make_texts(70, seed=3)  # two requests of up to 64
    texts[40] = " ".join(["embedding"] * 300)
    texts[60] = "向量检索" * 70  # shorter than texts[40]: sent before it (the client sorts by length)
    full = len(reference.tokenizer(texts[40])["input_ids"])
    assert full > len(reference.tokenizer(texts[60])["input_ids"]) > facts.max_tokens == 256

    def too_long(client: Any) -> Any:
        return client.embed(texts, truncate=False)

    with pytest.raises(InputTooLong) as caught:
        run(mode, protocol, triton, too_long)
    error = caught.value
    assert (error.index, error.tokens, error.max_tokens, error.status) == (40, full, facts.max_tokens, 400)
    assert "input 40" in str(error) and str(full) in str(error)

    # truncate=True (the default) embeds the first max_tokens tokens and reports both counts.
    result = run(mode, protocol, triton, lambda c: c.embed_with_usage(texts))
    assert result.token_counts[40] == facts.max_tokens and result.full_token_counts[40] == full
    assert result.token_counts.tolist() == reference.token_counts(texts)
    assert cosine_rows(result.vectors[40:41], reference.embed([texts[40]])).min() >= 0.9999


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "protocol"), MODES, ids=MODE_IDS)
def test_unknown_model_raises_model_not_found(mode: str, protocol: str, triton: TritonOptions) -> None:
    with pytest.raises(ModelNotFound) as caught:
        run(mode, protocol, triton, lambda c: c.embed(["hello"]), model="no-such-model")
    assert caught.value.status == 404 and "no-such-model" in str(caught.value)


@pytest.mark.parametrize(("mode", "protocol"), MODES, ids=MODE_IDS)
def test_closed_port_raises_server_unavailable_quickly(mode: str, protocol: str) -> None:
    closed = TritonOptions(repository=Path("unused"), http_port=free_port(), grpc_port=free_port())
    started = time.perf_counter()
    with pytest.raises(ServerUnavailable) as caught:
        run(mode, protocol, closed, lambda c: c.embed(["hello"]), timeout_s=2.0, retries=3, backoff_s=0.05)
    assert caught.value.status == 503
    assert time.perf_counter() - started < 5.0

    def ready(client: Any) -> Any:
        return client.is_ready()

    assert run(mode, protocol, closed, ready, retries=0) is False


@pytest.mark.parametrize(("mode", "protocol"), MODES, ids=MODE_IDS)
def test_timeout_raises_request_timeout(mode: str, protocol: str, triton: TritonOptions, expected: Expected) -> None:
    started = time.perf_counter()
    with pytest.raises(RequestTimeout) as caught:
        run(mode, protocol, triton, lambda c: c.embed(expected.texts[:256]), timeout_s=0.005)
    assert caught.value.status == 504 and time.perf_counter() - started < 5.0


@pytest.mark.parametrize(("mode", "protocol"), MODES, ids=MODE_IDS)
def test_invalid_texts_raise_invalid_input(mode: str, protocol: str, triton: TritonOptions) -> None:
    with pytest.raises(InvalidInput, match=r"input 2 .*surrogate") as caught:
        run(mode, protocol, triton, lambda c: c.embed(["fine", "also fine", "broken \ud800 text"]))
    assert caught.value.status == 400
    with pytest.raises(InvalidInput, match="input 1 is int"):
        run(mode, protocol, triton, lambda c: c.embed(["fine", 42]))


@pytest.mark.parametrize(("mode", "protocol"), MODES, ids=MODE_IDS)
def test_empty_list_and_single_string(mode: str, protocol: str, triton: TritonOptions, facts: ModelFacts) -> None:
    empty = run(mode, protocol, triton, lambda c: c.embed_with_usage([]))
    assert empty.vectors.shape == (0, facts.dim) and empty.vectors.dtype == np.float32
    assert empty.token_counts.shape == (0,) and empty.full_token_counts.shape == (0,)
    single = run(mode, protocol, triton, lambda c: c.embed("今天天气很好"))
    assert single.shape == (1, facts.dim)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            InferenceServerException("Request for unknown model: 'x' is not found", "StatusCode.NOT_FOUND"),
            ModelNotFound,
        ),
        (InferenceServerException("Request for unknown model: 'x' is not found", "404"), ModelNotFound),
        (InferenceServerException("Request for unknown model: 'x' is not found", "400"), ModelNotFound),
        (InferenceServerException("Request for unknown model: 'x' has no available versions", "400"), ModelNotReady),
        (InferenceServerException("model 'x' is not ready", "StatusCode.UNAVAILABLE"), ModelNotReady),
        (InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE"), ServerUnavailable),
        (InferenceServerException("Server is shutting down", "503"), ServerUnavailable),
        (InferenceServerException("Exceeds maximum queue size", "StatusCode.UNAVAILABLE"), Overloaded),
        (InferenceServerException("Exceeds maximum queue size", "503"), Overloaded),
        (InferenceServerException("quota", "StatusCode.RESOURCE_EXHAUSTED"), Overloaded),
        (InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), RequestTimeout),
        (InferenceServerException("batch-size must be <= 64", "StatusCode.INVALID_ARGUMENT"), InvalidInput),
        (InferenceServerException("in ensemble 'x', invalid input: TEXT[0] is not valid UTF-8", "500"), InvalidInput),
        (InferenceServerException("onnxruntime failed", "StatusCode.INTERNAL"), ServerError),
        # A server going away mid-request (issue 14: a stub or server restart must never be a 500).
        (
            InferenceServerException("in ensemble 'x', Stub process 'x-tokenizer_0_0' is not healthy.", "500"),
            ModelNotReady,
        ),
        (
            InferenceServerException(
                "Server is stopping, scheduler for model has stopped accepting new inference requests",
                "StatusCode.INTERNAL",
            ),
            ServerUnavailable,
        ),
        (InferenceServerException("Received RST_STREAM with error code 2", "StatusCode.INTERNAL"), ServerUnavailable),
        (InferenceServerException("Socket closed", "StatusCode.UNKNOWN"), ServerUnavailable),
        (InferenceServerException("Cancelled", "StatusCode.CANCELLED"), ServerUnavailable),
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailable),
        (TimeoutError("timed out"), RequestTimeout),
        (RuntimeError("boom"), ServerError),
    ],
)
def test_error_mapping(exc: BaseException, expected: type[EmbeddingError]) -> None:
    error = from_triton_exception(exc)
    assert type(error) is expected and isinstance(error, EmbeddingError)
    assert error.status == {
        ModelNotFound: 404, ModelNotReady: 503, ServerUnavailable: 503, Overloaded: 429,
        RequestTimeout: 504, InvalidInput: 400, ServerError: 500,
    }[expected]  # fmt: skip
    if isinstance(exc, InferenceServerException):
        assert error.message == exc.message()  # the server's own words


@pytest.mark.parametrize("ids", [[2**63], [[1, 2], [2**64 + 7]], [[2**100]]])
def test_token_ids_beyond_int64_raise_invalid_input(ids: list) -> None:
    """Issue 14 §3: ids over int64 were an OverflowError (a 500 behind the proxy); they are InvalidInput."""
    from bge_triton.client.triton_client import as_id_rows

    with pytest.raises(InvalidInput, match="largest token id"):
        as_id_rows(ids)
    assert [row.tolist() for row in as_id_rows([[1, 2**63 - 1]])] == [[1, 2**63 - 1]]
