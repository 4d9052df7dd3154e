"""The OpenAI-compatible proxy, as a real process in front of a real tritonserver, called with the
real `openai` SDK (and raw httpx where the SDK would hide the wire format)."""

from __future__ import annotations

import base64
import http
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import openai
import pytest
from conftest import BGE
from conftest import BGE_INSTRUCTION as INSTRUCTION

from bge_triton.export.parity import TorchReference, cosine_rows
from bge_triton.launcher import TritonOptions, free_port

if TYPE_CHECKING:
    from conftest import Service  # the spawn fixture's process type

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def proxy(two_model_triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(
        ["serve-proxy", "--triton-url", two_model_triton.http_url, "--port", str(port),
         "--alias", f"text-embedding-3-small={MINILM}", "--max-inputs", "64", "--max-body-bytes", "1000000",
         "--token-ids", "model"],  # token ids are this model's vocabulary ids here
        port=port,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sdk(proxy: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="EMPTY", max_retries=0)


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
    bases = [MINILM, BGE, "text-embedding-3-small"]
    assert [m["id"] for m in models["data"] if m["parent"] is None] == bases
    assert set(cards) == {f"{b}{s}" for b in bases for s in ("", "-query", "-passage")}
    for base in bases:  # each name's -query / -passage variant: the same model, marked with its parent
        assert cards[base]["input_type"] is None
        for kind in ("query", "passage"):
            variant = cards[f"{base}-{kind}"]
            assert (variant["parent"], variant["input_type"]) == (base, kind)
            assert {k: v for k, v in variant.items() if k not in ("id", "parent", "input_type")} == {
                k: v for k, v in cards[base].items() if k not in ("id", "parent", "input_type")
            }
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
    assert SNAKE_CASE.fullmatch(error["code"]), error
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


# -- NAME-query / NAME-passage (issue 13) ------------------------------------------------------------------------
def test_suffixed_model_names_select_the_instruction(
    sdk: openai.OpenAI, proxy: Service, bge_reference: TorchReference
) -> None:
    text = "如何部署向量模型"

    def embed(model: str, **extra: str) -> np.ndarray:
        return _vectors(sdk.embeddings.create(model=model, input=text, encoding_format="float", extra_body=extra))

    by_field, by_name = embed(BGE, input_type="query"), embed(f"{BGE}-query")
    plain, passage_by_name = embed(BGE), embed(f"{BGE}-passage")
    # components within 1e-4: the tiny random model maps every text to within cosine ~0.99997 of every other
    np.testing.assert_allclose(by_name, by_field, rtol=0, atol=1e-4)
    np.testing.assert_allclose(passage_by_name, plain, rtol=0, atol=1e-4)
    assert np.abs(by_name - plain).max() > 1e-4
    assert cosine_rows(by_name, bge_reference.embed([INSTRUCTION + text])).min() >= 0.9999
    # the random tiny model maps both close together: the query must still sit nearer its own reference
    assert cosine_rows(by_name, bge_reference.embed([INSTRUCTION + text]))[0] > cosine_rows(by_name, plain)[0]
    np.testing.assert_allclose(embed(f"{BGE}-query", input_type="query"), by_field, rtol=0, atol=1e-4)  # agreeing
    alias = sdk.embeddings.create(model="text-embedding-3-small-query", input=text, encoding_format="float")
    assert alias.model == "text-embedding-3-small-query"
    assert cosine_rows(_vectors(alias), embed(MINILM, input_type="query")).min() >= 0.9999
    card = httpx.get(f"{proxy.url}/v1/models/{BGE}-query", timeout=10).json()
    assert (card["id"], card["parent"], card["input_type"], card["dimensions"]) == (f"{BGE}-query", BGE, "query", 64)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": f"{BGE}-query", "input": "x", "input_type": "passage"}, 400, "input_type_conflict", "input_type"),
        ({"model": f"{BGE}-passage", "input": "x", "input_type": "query"}, 400, "input_type_conflict", "input_type"),
        ({"model": "nope-query", "input": "x"}, 404, "model_not_found", "model"),
        ({"model": f"{BGE}-query-query", "input": "x"}, 404, "model_not_found", "model"),
    ],
    ids=["query-vs-passage", "passage-vs-query", "unknown-base", "double-suffix"],
)
def test_suffixed_names_refuse_what_they_cannot_mean(
    proxy: Service, body: dict, status: int, code: str, param: str
) -> None:
    response = httpx.post(f"{proxy.url}/v1/embeddings", json=body, timeout=10)
    assert response.status_code == status, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)


def test_token_ids_get_no_instruction_put_in_front(
    proxy: Service, bge_reference: TorchReference, reference: TorchReference
) -> None:
    """--token-ids model embeds ids as given: asking for a non-empty instruction with ids is a 400, not a
    vector without it."""
    ids = bge_reference.tokenizer("如何部署", add_special_tokens=False)["input_ids"]
    for body in ({"model": f"{BGE}-query", "input": ids}, {"model": BGE, "input": [ids], "input_type": "query"}):
        response = httpx.post(f"{proxy.url}/v1/embeddings", json=body, timeout=10)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "instruction_with_token_ids"
    # MiniLM's instructions are empty: nothing to put in front, the ids embed like their text
    ids = reference.tokenizer("how to deploy", add_special_tokens=False)["input_ids"]
    body = {"model": f"{MINILM}-query", "input": ids, "encoding_format": "float"}
    got = np.array(httpx.post(f"{proxy.url}/v1/embeddings", json=body, timeout=10).json()["data"][0]["embedding"])
    assert cosine_rows(got[None], reference.embed(["how to deploy"])).min() >= 0.9999


# -- error codes -------------------------------------------------------------------------------------------------
SNAKE_CASE = re.compile(r"[a-z]+(_[a-z]+)*")


def test_every_error_code_the_proxy_can_send_is_snake_case() -> None:
    """Every `code=` in the proxy's source is a snake_case literal or one of the mappings below, and every
    ProxyError / error_response carries one; the mappings give snake_case for every client-library error class
    and every HTTP error status."""
    import ast

    import bge_triton.client.proxy as proxy_package
    from bge_triton.client.errors import EmbeddingError
    from bge_triton.client.proxy.errors import EMBEDDING_ERROR_CODES, embedding_error_code, http_status_code

    literals: set[object] = set()
    computed: set[str] = set()
    without: list[str] = []
    for path in sorted(Path(proxy_package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            codes = [kw.value for kw in node.keywords if kw.arg in ("code", "empty_code")]
            if name in ("ProxyError", "error_response") and not codes:
                without.append(f"{path.name}:{node.lineno}")
            for value in codes:
                if isinstance(value, ast.Constant):
                    literals.add(value.value)
                else:
                    computed.add(f"{path.name}: {ast.unparse(value)}")
    assert not without, f"errors without a code: {without}"
    bad = sorted(str(c) for c in literals if not (isinstance(c, str) and SNAKE_CASE.fullmatch(c)))
    assert not bad and len(literals) >= 15, (bad, literals)
    assert computed == {
        "errors.py: code",  # from_embedding_error: embedding_error_code(exc)
        "errors.py: exc.code",  # a ProxyError's own (a literal above, or embedding_error_code)
        "errors.py: err.code",
        "errors.py: http_status_code(exc.status_code)",
        "schemas.py: code",  # error_body: the body error_response builds
        "rerank_routes.py: empty_code",  # RerankService.rank's parameter: its callers pass literals (read above)
    }, computed

    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    for cls in subclasses(EmbeddingError):
        assert cls in EMBEDDING_ERROR_CODES, f"{cls.__name__} has no error code"
        assert SNAKE_CASE.fullmatch(embedding_error_code(cls.__new__(cls))), cls
    for status in (s for s in http.HTTPStatus if s >= 400):
        assert SNAKE_CASE.fullmatch(http_status_code(status)), status
    assert (http_status_code(404), http_status_code(405)) == ("not_found", "method_not_allowed")


def test_triton_and_framework_errors_have_snake_case_codes(proxy: Service) -> None:
    """The id outside the vocabulary is Triton's rejection (it was answered with code 'InvalidInput')."""
    response = httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MINILM, "input": [10**6]}, timeout=10)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_input")
    response = httpx.get(f"{proxy.url}/v1/nothing-here", timeout=10)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    response = httpx.get(f"{proxy.url}/v1/embeddings", timeout=10)
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")
