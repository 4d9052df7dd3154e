"""`POST /tokenize` and the `NAME-tokenize` Triton model behind it, against a real tritonserver + proxy
serving all-MiniLM-L6-v2, compared with `transformers.AutoTokenizer` of the same checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from google.protobuf import text_format
from transformers import AutoTokenizer
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.client import AsyncEmbeddingClient, EmbeddingClient, ModelNotFound, TokenizedText, list_models
from bge_triton.client.proxy.tokenize_route import token_rows
from bge_triton.export.checkpoint import minilm_dir
from bge_triton.launcher import TritonOptions, free_port

if TYPE_CHECKING:
    from conftest import Service

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["Hello, world!", "Tokenizers split unbelievable words", "Café déjà vu 🚀 你好世界", "  spaced   out  "]
LONG = " ".join(f"word{i} unbelievable" for i in range(200))  # far over MiniLM's 256-token window


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


@pytest.fixture(scope="module")
def proxy(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(["serve-proxy", "--triton-url", triton.http_url, "--port", str(port)], port=port, ready_path="/ready")


def _tokenize(proxy: Service, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{proxy.url}/tokenize", json=body, timeout=30)


def test_ids_offsets_and_special_flags_match_the_checkpoint_tokenizer(proxy: Service, hf_tokenizer: Any) -> None:
    response = _tokenize(proxy, {"inputs": TEXTS, "model": MODEL})
    assert response.status_code == 200, response.text
    assert response.headers["x-max-tokens"] == "256"
    answer = response.json()
    assert len(answer) == len(TEXTS)
    for text, tokens in zip(TEXTS, answer, strict=True):
        expected = hf_tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        assert [t["id"] for t in tokens] == expected["input_ids"]
        assert [t["special"] for t in tokens] == [bool(m) for m in expected["special_tokens_mask"]]
        assert [t["token"] for t in tokens] == hf_tokenizer.convert_ids_to_tokens(expected["input_ids"])
        for token, (start, stop) in zip(tokens, expected["offset_mapping"], strict=True):
            assert set(token) == {"id", "text", "special", "start", "stop", "token"}
            if token["special"]:  # TEI's shape: no offsets, the vocabulary string as text
                assert (token["start"], token["stop"], token["text"]) == (None, None, token["token"])
            else:
                assert (token["start"], token["stop"]) == (start, stop)
                assert text[token["start"] : token["stop"]] == token["text"]
    assert answer[0][0]["text"] == "[CLS]" and answer[0][-1]["text"] == "[SEP]"
    rocket = next(t for t in answer[2] if t["text"] == "🚀")
    assert (rocket["start"], rocket["stop"]) == (13, 14)  # character offsets (TEI's are UTF-8 bytes: 16, 20)


def test_over_length_text_returns_every_token(proxy: Service, hf_tokenizer: Any) -> None:
    (card,) = [c for c in httpx.get(f"{proxy.url}/v1/models", timeout=10).json()["data"] if c["parent"] is None]
    answer = _tokenize(proxy, {"inputs": LONG}).json()  # a single string; `model` may be left out with one model
    (tokens,) = answer
    full = hf_tokenizer(LONG)["input_ids"]
    assert len(tokens) == len(full) > card["max_tokens"] == 256
    assert [t["id"] for t in tokens] == full
    assert tokens[-1]["special"] and not tokens[255]["special"]  # untruncated: [SEP] only at the very end
    # what the embedding ensemble reports for the same text agrees
    usage = httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": LONG}, timeout=30).json()["usage"]
    assert usage["prompt_tokens"] == 256


def test_without_special_tokens_and_openai_field_name(proxy: Service, hf_tokenizer: Any) -> None:
    answer = _tokenize(proxy, {"input": ["Hello, world!"], "add_special_tokens": False}).json()
    assert [t["id"] for t in answer[0]] == hf_tokenizer("Hello, world!", add_special_tokens=False)["input_ids"]
    assert not any(t["special"] for t in answer[0])


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": []}, 400, "must not be empty"),
        ({"inputs": ""}, 400, "empty string"),
        ({"inputs": ["ok", ""]}, 400, "input 1 is an empty string"),
        ({"inputs": 7}, 400, "inputs"),
        ({"inputs": "x", "model": "no-such-model"}, 404, "does not exist"),
        ({"inputs": "x", "input_type": "document"}, 400, "input_type"),
    ],
    ids=["empty-list", "empty-string", "one-empty", "wrong-type", "unknown-model", "bad-input-type"],
)
def test_errors_are_openai_error_json(proxy: Service, body: dict[str, Any], status: int, fragment: str) -> None:
    response = _tokenize(proxy, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    if status == 404:
        assert error["code"] == "model_not_found"


def test_tokenize_model_config(repository: Path) -> None:
    folder = repository / f"{MODEL}-tokenize"
    config = text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), mc.ModelConfig())
    assert config.backend == "python" and config.max_batch_size > 0
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        ("TEXT", mc.TYPE_STRING, [1], True), ("ADD_SPECIAL_TOKENS", mc.TYPE_BOOL, [1], True),
        ("DECODE_IDS", mc.TYPE_INT64, [-1], True), ("SKIP_SPECIAL_TOKENS", mc.TYPE_BOOL, [1], True),
    ]  # fmt: skip
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("DECODED", mc.TYPE_STRING, [1]), ("TOKEN_IDS", mc.TYPE_INT64, [-1]), ("TOKEN_OFFSETS", mc.TYPE_INT64, [-1, 2]),
        ("TOKEN_SPECIAL", mc.TYPE_BOOL, [-1]), ("TOKENS", mc.TYPE_STRING, [-1]), ("TOKEN_COUNT", mc.TYPE_INT64, [1]),
    ]  # fmt: skip
    assert "dim" not in config.parameters  # no model facts: never taken for an embedding model
    files = sorted(p.name for p in (folder / "1").iterdir() if p.name != "__pycache__")  # Triton may have loaded it
    assert files == ["model.py", "tokenizer.json", "tokenizer.py"]


def test_tokenize_model_is_not_listed_as_an_embedding_model(triton: TritonOptions) -> None:
    index = httpx.post(f"{triton.http_url}/v2/repository/index", json={}, timeout=10).json()
    names = {m["name"] for m in index if m.get("state") == "READY"}
    assert f"{MODEL}-tokenize" in names
    assert set(list_models(triton.grpc_url)) == {MODEL}


def test_client_library_sync_and_async(triton: TritonOptions, hf_tokenizer: Any) -> None:
    with EmbeddingClient(triton.grpc_url, model=MODEL) as client:
        result = client.tokenize([*TEXTS, LONG])
        assert [list(t.ids) for t in result] == [hf_tokenizer(t)["input_ids"] for t in [*TEXTS, LONG]]
        assert len(result[-1]) > client.facts.max_tokens
        # the query instruction goes in front and offsets index the text as sent
        client._core.facts = dataclasses.replace(client.facts, query_instruction="query: ")
        (query,) = client.tokenize("Hello", query=True)
        assert query.text == "query: Hello"
        pieces = [query.text[s:e] for (s, e), sp in zip(query.offsets, query.special, strict=True) if not sp]
        assert pieces == ["query", ":", "Hello"]

    async def run() -> list[TokenizedText]:
        async with AsyncEmbeddingClient(triton.http_url, "http", MODEL) as client:
            return await client.tokenize(TEXTS, add_special_tokens=False)

    import asyncio

    result = asyncio.run(run())
    assert [t.tokens for t in result] == [hf_tokenizer.tokenize(t) for t in TEXTS]


def test_token_rows_and_missing_model_message() -> None:
    import numpy as np

    tokenized = TokenizedText(
        "query: hi",
        np.array([101, 1, 2, 3, 102]),
        np.array([[0, 0], [0, 5], [5, 6], [7, 9], [0, 0]]),
        np.array([True, False, False, False, True]),
        ["[CLS]", "query", ":", "hi", "[SEP]"],
    )
    rows = token_rows(tokenized)
    assert [r["text"] for r in rows] == ["[CLS]", "query", ":", "hi", "[SEP]"]
    assert rows[3] == {"id": 3, "text": "hi", "special": False, "start": 7, "stop": 9, "token": "hi"}
    core = EmbeddingClient("127.0.0.1:1", model=MODEL)._core
    core.model = MODEL
    plan = type("Plan", (), {"model": f"{MODEL}-tokenize"})()
    error = core.tokenize_failure(ModelNotFound("unknown model"), plan)  # type: ignore[arg-type]
    assert isinstance(error, ModelNotFound) and "export the model again" in error.message
