"""Worst days: bad input, fuzzing, overload, concurrency, API keys (real proxy, real tritonserver)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import random
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from bge_triton.export.parity import TorchReference, cosine_rows
from bge_triton.launcher import TritonOptions, free_port

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def proxy(triton: TritonOptions, spawn: Callable) -> str:
    port = free_port()
    spawn(["serve-proxy", "--triton-url", triton.grpc_url, "--port", str(port)], port=port, ready_path="/ready")
    return f"http://127.0.0.1:{port}"


def _post(url: str, body: object, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=60, **kw)


def _assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# -- bad input -----------------------------------------------------------------------------------


def test_invalid_utf8_body_is_400(proxy: str) -> None:
    body = b'{"model": "all-MiniLM-L6-v2", "input": "\xff\xfe bad"}'
    response = httpx.post(f"{proxy}/v1/embeddings", content=body, headers={"content-type": "application/json"})
    _assert_openai_error(response, 400)


def test_ten_thousand_items_is_400_and_one_megabyte_string_is_truncated(proxy: str) -> None:
    error = _assert_openai_error(_post(proxy, {"model": MODEL, "input": ["x"] * 10_000}), 400)
    assert "at most 2048" in error["message"]
    big = _post(proxy, {"model": MODEL, "input": "向量" * 500_000, "encoding_format": "base64"})  # ~3 MB of UTF-8
    assert big.status_code == 200 and big.json()["usage"]["prompt_tokens"] == 256
    nested = _post(proxy, {"model": MODEL, "input": [[["a"]]]})
    assert _assert_openai_error(nested, 400)["param"] == "input"


SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20)
JSON_VALUES = st.recursive(
    SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON_VALUES, fmt=st.sampled_from(["float", "base64"]))
def test_fuzzed_inputs_get_200_or_a_typed_400(proxy: str, value: object, fmt: str) -> None:
    response = _post(proxy, {"model": MODEL, "input": value, "encoding_format": fmt})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        _assert_openai_error(response, 400)
        return
    # accepted: a string, a list of strings, token ids or token-id arrays, one vector each
    expected = 1 if isinstance(value, str) or (value and all(isinstance(v, int) for v in value)) else len(value)
    assert len(response.json()["data"]) == expected


def test_schemathesis_finds_no_server_error(proxy: str) -> None:
    """Every operation of the proxy's own OpenAPI schema, fuzzed (schemathesis strategies run by
    hypothesis directly: its pytest plugin does not support this pytest)."""
    schema = schemathesis.openapi.from_url(f"{proxy}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/embeddings", "GET /v1/models", "GET /ready"}
    for operation in operations:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case) -> None:  # case: schemathesis Case
            case.call_and_validate(checks=[not_a_server_error])

        check()


# -- concurrency ---------------------------------------------------------------------------------


def test_many_clients_never_get_each_others_vectors(proxy: str, reference: TorchReference) -> None:
    rng = random.Random(3)
    words = ["向量", "检索", "服务", "模型", "latency", "batch", "queue", "北京", "上海", "🙂"]
    requests = [
        [f"client {c} request {r} item {i}: " + " ".join(rng.choices(words, k=rng.randint(1, 40)))
         for i in range(rng.randint(1, 4))]
        for c in range(16) for r in range(12)
    ]  # fmt: skip

    def call(texts: list[str]) -> np.ndarray:
        data = _post(proxy, {"model": MODEL, "input": texts, "encoding_format": "float"}).json()["data"]
        return np.array([d["embedding"] for d in data], dtype=np.float32)

    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, requests))
    flat_texts = [t for texts in requests for t in texts]
    cos = cosine_rows(np.concatenate(answers), reference.embed(flat_texts, batch_size=64))
    assert cos.min() >= 0.9999, flat_texts[int(cos.argmin())]


# -- API keys ------------------------------------------------------------------------------------


def test_api_keys(triton: TritonOptions, spawn: Callable, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nfile-key-2\n")
    port = free_port()
    service = spawn(
        ["serve-proxy", "--triton-url", triton.grpc_url, "--port", str(port), "--api-key", "flag-key-1",
         "--api-key-file", str(key_file), "--protect-metrics"],
        port=port, env={"BGE_TRITON_API_KEYS": "env-key-3,env-key-4"},
    )  # fmt: skip
    body = {"model": MODEL, "input": "x"}
    missing = _assert_openai_error(_post(service.url, body), 401)
    assert missing["type"] == "authentication_error" and missing["code"] == "invalid_api_key"
    wrong = _post(service.url, body, headers={"Authorization": "Bearer flag-key-"})
    assert "incorrect API key" in _assert_openai_error(wrong, 401)["message"]
    assert wrong.headers["www-authenticate"] == "Bearer"
    for key in ("flag-key-1", "file-key-2", "env-key-3", "env-key-4"):
        assert _post(service.url, body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(f"{service.url}/v1/models").status_code == 401
    assert httpx.get(f"{service.url}/health").status_code == 200
    assert httpx.get(f"{service.url}/ready").status_code == 200
    assert httpx.get(f"{service.url}/metrics").status_code == 401
    auth = {"Authorization": "Bearer env-key-3"}
    assert httpx.get(f"{service.url}/metrics", headers=auth).status_code == 200
    log = service.log_text()
    assert "POST /v1/embeddings" in log
    assert not any(k in log for k in ("flag-key-1", "file-key-2", "env-key-3", "flag-key-"))


def test_without_keys_any_key_is_accepted(proxy: str) -> None:
    for headers in ({}, {"Authorization": "Bearer EMPTY"}, {"Authorization": "Bearer sk-anything"}):
        assert _post(proxy, {"model": MODEL, "input": "x"}, headers=headers).status_code == 200
    assert httpx.get(f"{proxy}/metrics").status_code == 200


def test_metrics_after_bad_requests_count_errors(proxy: str) -> None:
    _post(proxy, {"model": MODEL, "input": []})
    text = httpx.get(f"{proxy}/metrics").text
    assert 'bge_proxy_errors_total{type="invalid_request_error"}' in text
    assert json.loads(httpx.get(f"{proxy}/health").text) == {"status": "ok"}
