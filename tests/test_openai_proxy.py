"""The OpenAI-compatible proxy, as a real process in front of a real tritonserver, called with the
real `openai` SDK (and raw httpx where the SDK would hide the wire format)."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import openai
import pytest

from bge_triton.export.bench_model import make_bench_model
from bge_triton.export.exporter import export_model
from bge_triton.export.parity import TorchReference, cosine_rows
from bge_triton.launcher import TritonOptions, TritonServer, free_port
from bge_triton.model_facts import ModelFacts
from bge_triton.package_data import model_config_dir

if TYPE_CHECKING:
    from conftest import Service  # the spawn fixture's process type

MINILM = "all-MiniLM-L6-v2"
BGE = "bge-small-zh-v1.5"  # a shrunken random-init model with bge-zh's tokenizer and query instruction
INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


@pytest.fixture(scope="module")
def bge_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config_dir = tmp_path_factory.mktemp("bge-config")
    shutil.copytree(model_config_dir("bge-large-zh-v1.5"), config_dir, dirs_exist_ok=True)
    cfg = json.loads((config_dir / "config.json").read_text())
    cfg |= {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    (config_dir / "config.json").write_text(json.dumps(cfg))
    return make_bench_model(config_dir, tmp_path_factory.mktemp("ckpt") / BGE)


@pytest.fixture(scope="module")
def two_model_triton(
    repository: Path, bge_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonOptions]:
    """A second tritonserver serving MiniLM and the bge-zh-shaped model side by side."""
    repo = tmp_path_factory.mktemp("two_models")
    for folder in repository.iterdir():
        shutil.copytree(folder, repo / folder.name)
    export_model(str(bge_checkpoint), repo)
    options = TritonOptions(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(options, log_file=tmp_path_factory.mktemp("triton2") / "tritonserver.log"):
        yield options


@pytest.fixture(scope="module")
def proxy(two_model_triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(
        ["serve-proxy", "--triton-url", two_model_triton.grpc_url, "--port", str(port),
         "--alias", f"text-embedding-3-small={MINILM}", "--max-inputs", "64", "--max-body-bytes", "1000000"],
        port=port,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sdk(proxy: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="module")
def bge_reference(bge_checkpoint: Path) -> TorchReference:
    return TorchReference(bge_checkpoint, ModelFacts.from_checkpoint(bge_checkpoint, name=BGE, source=BGE))


def _vectors(response) -> np.ndarray:  # openai CreateEmbeddingResponse
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_string_input(sdk: openai.OpenAI, reference: TorchReference) -> None:
    response = sdk.embeddings.create(model=MINILM, input="今天天气很好", encoding_format="float")
    assert response.object == "list" and response.model == MINILM and response.data[0].object == "embedding"
    vectors = _vectors(response)
    assert vectors.shape == (1, 384)
    assert cosine_rows(vectors, reference.embed(["今天天气很好"])).min() >= 0.9999
    assert response.usage.prompt_tokens == response.usage.total_tokens == reference.token_counts(["今天天气很好"])[0]


def test_list_input_in_order_with_sdk_default_base64(sdk: openai.OpenAI, reference: TorchReference) -> None:
    texts = [f"sentence number {i} " + "词" * (i % 17) for i in range(50)]
    response = sdk.embeddings.create(model=MINILM, input=texts)  # the SDK asks for base64 and decodes it
    vectors = _vectors(response)
    assert cosine_rows(vectors, reference.embed(texts)).min() >= 0.9999
    assert response.usage.prompt_tokens == sum(reference.token_counts(texts))


def test_base64_is_little_endian_float32(proxy: Service, reference: TorchReference) -> None:
    body = {"model": MINILM, "input": ["hello", "世界"], "encoding_format": "base64"}
    data = httpx.post(f"{proxy.url}/v1/embeddings", json=body, timeout=30).json()["data"]
    vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    assert cosine_rows(vectors, reference.embed(["hello", "世界"])).min() >= 0.9999


def test_token_id_inputs(sdk: openai.OpenAI, reference: TorchReference) -> None:
    texts = ["hello world", "向量检索"]
    ids = [reference.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    single = _vectors(sdk.embeddings.create(model=MINILM, input=ids[0], encoding_format="float"))
    many = sdk.embeddings.create(model=MINILM, input=ids, encoding_format="float")
    assert cosine_rows(single, reference.embed(texts[:1])).min() >= 0.9999
    assert cosine_rows(_vectors(many), reference.embed(texts)).min() >= 0.9999
    assert many.usage.prompt_tokens == sum(reference.token_counts(texts))


def test_dimensions_truncate_and_renormalise(sdk: openai.OpenAI, reference: TorchReference) -> None:
    vectors = _vectors(sdk.embeddings.create(model=MINILM, input=["a", "b c"], dimensions=128))
    assert vectors.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = reference.embed(["a", "b c"])[:, :128]
    assert cosine_rows(vectors, expected).min() >= 0.9999


def test_query_input_type_applies_the_model_instruction(sdk: openai.OpenAI, bge_reference: TorchReference) -> None:
    text = "如何部署向量模型"
    query = _vectors(sdk.embeddings.create(model=BGE, input=text, extra_body={"input_type": "query"}))
    passage = _vectors(sdk.embeddings.create(model=BGE, input=text))
    with_instruction, plain = bge_reference.embed([INSTRUCTION + text]), bge_reference.embed([text])
    assert cosine_rows(query, with_instruction).min() >= 0.9999
    assert cosine_rows(passage, plain).min() >= 0.9999
    # the random tiny model maps both close together: the query must still sit nearer its own reference
    assert cosine_rows(query, with_instruction)[0] > cosine_rows(query, plain)[0]
    assert cosine_rows(passage, plain)[0] > cosine_rows(passage, with_instruction)[0]


def test_alias_and_models_list(sdk: openai.OpenAI, proxy: Service) -> None:
    response = sdk.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")
    assert response.model == "text-embedding-3-small" and len(response.data[0].embedding) == 384
    models = httpx.get(f"{proxy.url}/v1/models", timeout=10).json()
    assert models["object"] == "list"
    cards = {m["id"]: m for m in models["data"]}
    assert set(cards) == {MINILM, BGE, "text-embedding-3-small"}
    assert (cards[MINILM]["dimensions"], cards[MINILM]["max_tokens"]) == (384, 256)
    assert (cards[BGE]["dimensions"], cards[BGE]["max_tokens"]) == (64, 512)
    assert (cards[BGE]["query_instruction"], cards[BGE]["passage_instruction"]) == (INSTRUCTION, "")
    assert [m.id for m in sdk.models.list()] == [m["id"] for m in models["data"]]


def test_unknown_model_is_404_model_not_found(sdk: openai.OpenAI, proxy: Service) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="nope", input="x")
    body = httpx.post(f"{proxy.url}/v1/embeddings", json={"model": "nope", "input": "x"}, timeout=10).json()
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert body["error"]["type"] == "invalid_request_error" and "nope" in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": MINILM, "input": []}, "input", "must not be empty"),
        ({"model": MINILM, "input": ""}, "input", "empty string"),
        ({"model": MINILM, "input": ["ok", ""]}, "input", "input 1 is an empty string"),
        ({"model": MINILM, "input": 5}, "input", "must be"),
        ({"model": MINILM, "input": None}, "input", "must be"),
        ({"model": MINILM, "input": [1, "a"]}, "input", "must be"),
        ({"model": MINILM, "input": [["a"]]}, "input", "must be"),
        ({"model": MINILM, "input": [True]}, "input", "must be"),
        ({"model": MINILM, "input": [[]]}, "input", "empty token array"),
        ({"model": MINILM, "input": [-3, 5]}, "input", "negative token id"),
        ({"model": MINILM, "input": [10**6]}, None, "outside the vocabulary"),
        ({"input": "x"}, "model", "model"),
        ({"model": MINILM, "input": "x", "encoding_format": "int8"}, "encoding_format", "encoding_format"),
        ({"model": MINILM, "input": "x", "dimensions": 0}, "dimensions", "dimensions"),
        ({"model": MINILM, "input": "x", "dimensions": 385}, "dimensions", "at most 384"),
        ({"model": MINILM, "input": ["x"] * 65}, "input", "at most 64"),
        ({"model": MINILM, "input": "词 " * 300, "truncate": False}, "input", "input 0 has 302 tokens"),
    ],
    ids=[
        "empty-list", "empty-string", "empty-item", "int", "null", "mixed", "nested-strings", "bool",
        "empty-ids", "negative-id", "id-out-of-vocab", "no-model", "bad-format", "dimensions-0",
        "dimensions-too-big", "too-many-inputs", "too-long-no-truncate",
    ],
)  # fmt: skip
def test_bad_requests_get_400_openai_errors(proxy: Service, body: dict, param: str | None, fragment: str) -> None:
    response = httpx.post(f"{proxy.url}/v1/embeddings", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"], error
    if param is not None:
        assert error["param"] == param


def test_malformed_json_and_oversized_body(proxy: Service) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/embeddings", content=b'{"model": "x", "input": [', timeout=10,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    big = json.dumps({"model": MINILM, "input": "x" * 1_100_000})
    response = httpx.post(f"{proxy.url}/v1/embeddings", content=big, timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    # still serving
    ok = httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MINILM, "input": "x"}, timeout=10)
    assert ok.status_code == 200


def test_over_length_input_is_truncated_by_default(sdk: openai.OpenAI, reference: TorchReference) -> None:
    text = "词 " * 300
    response = sdk.embeddings.create(model=MINILM, input=text, encoding_format="float")
    assert response.usage.prompt_tokens == 256
    assert cosine_rows(_vectors(response), reference.embed([text])).min() >= 0.9999


def test_health_ready_metrics_and_request_log(proxy: Service, sdk: openai.OpenAI) -> None:
    assert httpx.get(f"{proxy.url}/health", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{proxy.url}/ready", timeout=5)
    assert ready.status_code == 200 and set(ready.json()["models"]) == {MINILM, BGE}
    sdk.embeddings.create(model=MINILM, input=["a", "b"])
    metrics = httpx.get(f"{proxy.url}/metrics", timeout=5).text
    assert 'bge_proxy_requests_total{endpoint="/v1/embeddings",model="all-MiniLM-L6-v2",status="200"}' in metrics
    assert "bge_proxy_request_seconds_bucket" in metrics and "bge_proxy_tokens_per_request" in metrics
    log = proxy.log_text()
    assert f"ready: OpenAI API {proxy.url}/v1 · web page {proxy.url}/ui/ · API docs {proxy.url}/docs" in log
    assert f"POST /v1/embeddings model={MINILM} inputs=2 tokens=6 status=200" in log


def test_proxy_without_triton_answers_503_and_not_ready(spawn: Callable[..., Service]) -> None:
    port = free_port()
    lonely = spawn(["serve-proxy", "--triton-url", f"127.0.0.1:{free_port()}", "--port", str(port),
                    "--request-timeout", "2"], port=port)  # fmt: skip
    try:
        ready = httpx.get(f"{lonely.url}/ready", timeout=20)
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json()["error"]["type"] == "server_error"
        started = time.monotonic()
        response = httpx.post(f"{lonely.url}/v1/embeddings", json={"model": MINILM, "input": "x"}, timeout=20)
        assert response.status_code == 503 and "Retry-After" in response.headers
        assert time.monotonic() - started < 10
        assert httpx.get(f"{lonely.url}/health", timeout=5).status_code == 200
    finally:
        lonely.stop()


def test_openapi_schema_documents_the_contract(proxy: Service) -> None:
    schema = httpx.get(f"{proxy.url}/openapi.json", timeout=5).json()
    assert "/v1/embeddings" in schema["paths"] and "/v1/models" in schema["paths"]
    props = schema["components"]["schemas"]["EmbeddingRequest"]["properties"]
    assert {"input", "model", "encoding_format", "dimensions", "user", "input_type", "truncate"} <= set(props)
