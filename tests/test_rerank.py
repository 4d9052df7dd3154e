"""Rerankers (issue 17): export of a cross-encoder, the client library and the proxy's `/rerank` + `/v1/rerank`.

A random-init bge-reranker-v2-m3 (its exact config, scaled down to 2 layers of hidden 64; vocabulary, 8194
positions and the one label kept) is exported and served by a real tritonserver beside MiniLM; its scores are
compared with sentence-transformers' `CrossEncoder` and FlagEmbedding's `FlagReranker` on the same checkpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from bge_triton.client import InputTooLong
from bge_triton.client.rerank_client import AsyncRerankClient, RerankClient
from bge_triton.export.exporter import ExportResult, export_model
from bge_triton.export.model_configs import parse_config
from bge_triton.launcher import TritonOptions, TritonServer, free_port
from bge_triton.model_facts import FactsError, ModelFacts, read_facts

if TYPE_CHECKING:
    from conftest import Service

RERANKER = "bge-reranker-tiny"
QUERY = "如何部署向量模型？"
DOCUMENTS = [
    "用 Triton 部署嵌入模型，前面放一个 OpenAI 兼容的代理。",
    "今天天气很好，我们去公园散步吧。",
    "A cross-encoder reads the query and the document together.",
    "向量模型 deployment with Triton and nginx 🚀",
    "重排序模型给每个文档打分。",
]
LONG_DOCUMENT = "这是一个很长的文档，用来测试截断。" * 1500  # ~15k tokens: past the 8192-token window


@pytest.fixture(scope="module")
def rerank_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bge_triton.export.rerank_checkpoint import make_rerank_checkpoint

    return make_rerank_checkpoint(tmp_path_factory.mktemp("reranker") / RERANKER, num_layers=2, hidden_size=64)


@pytest.fixture(scope="module")
def rerank_export(rerank_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return export_model(str(rerank_checkpoint), tmp_path_factory.mktemp("rerank_repository"), name=RERANKER)


@pytest.fixture(scope="module")
def rerank_triton(
    rerank_export: ExportResult, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonOptions]:
    """The tiny reranker and MiniLM (an embedding model) in one tritonserver."""
    repo = rerank_export.ensemble_dir.parent
    for folder in repository.iterdir():
        if not (repo / folder.name).exists():
            shutil.copytree(folder, repo / folder.name)
    options = TritonOptions(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(options, log_file=tmp_path_factory.mktemp("rerank_triton") / "tritonserver.log"):
        yield options


@pytest.fixture(scope="module")
def client(rerank_triton: TritonOptions) -> Iterator[RerankClient]:
    with RerankClient(f"127.0.0.1:{rerank_triton.grpc_port}") as c:
        yield c


@pytest.fixture(scope="module")
def proxy(rerank_triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(["serve-proxy", f"--triton-url=http://127.0.0.1:{rerank_triton.http_port}", "--port", str(port),
                  "--max-inputs", "1500"], port=port, ready_path="/ready")  # fmt: skip


@pytest.fixture(scope="module")
def cross_encoder(rerank_checkpoint: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(rerank_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def flag_reranker(rerank_checkpoint: Path) -> Any:
    from FlagEmbedding import FlagReranker

    return FlagReranker(str(rerank_checkpoint), use_fp16=False, devices="cpu")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- export ---------------------------------------------------------------------------------------------------
def test_export_reads_the_facts_and_checks_parity(rerank_export: ExportResult) -> None:
    facts = rerank_export.facts
    assert (facts.task, facts.dim, facts.max_tokens, facts.model_type) == ("rerank", 1, 8192, "xlm-roberta")
    assert rerank_export.parity.passed and rerank_export.parity.max_abs_diff <= 1e-4
    repo = rerank_export.ensemble_dir.parent
    assert read_facts(rerank_export.ensemble_dir).task == "rerank"
    config = parse_config((rerank_export.ensemble_dir / "config.pbtxt").read_text())
    assert [i.name for i in config.input] == ["QUERY", "DOCUMENT"]
    assert [o.name for o in config.output] == ["SCORE", "TOKEN_COUNT", "FULL_TOKEN_COUNT"]
    assert [s.model_name for s in config.ensemble_scheduling.step] == [f"{RERANKER}-pair-tokenizer",
                                                                       f"{RERANKER}-encoder"]  # fmt: skip
    encoder = parse_config((repo / f"{RERANKER}-encoder" / "config.pbtxt").read_text())
    assert list(encoder.dynamic_batching.preferred_batch_size) == [8, 16, 32]  # batching, as for embeddings
    assert not encoder.dynamic_batching.HasField("default_queue_policy")  # none by default (docs/reliability.md)
    assert encoder.parameters["max_batch_tokens"].string_value == "16384"  # the token budget, as for embeddings
    assert json.loads((repo / f"{RERANKER}-encoder" / "parity.json").read_text())["max_abs_diff"] <= 1e-4


def test_a_classifier_with_several_labels_is_refused(tmp_path: Path) -> None:
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert", "hidden_size": 8,
              "id2label": {"0": "NEG", "1": "POS"}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FactsError, match="2 labels"):
        ModelFacts.from_checkpoint(tmp_path, name="x", source="x")
    config |= {"id2label": {"0": "LABEL_0"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert ModelFacts.from_checkpoint(tmp_path, name="x", source="x").task == "rerank"
    from bge_triton.export.rerank_checkpoint import reranker_config_dir

    shipped = ModelFacts.from_checkpoint(reranker_config_dir(), name="r", source="BAAI/bge-reranker-v2-m3")
    assert (shipped.task, shipped.dim, shipped.max_tokens, shipped.uses_token_type_ids) == ("rerank", 1, 8192, False)


# -- scores against the reference implementations ---------------------------------------------------------------
def test_scores_equal_cross_encoder_and_flag_reranker(client: RerankClient, cross_encoder: Any,
                                                      flag_reranker: Any) -> None:  # fmt: skip
    import torch

    documents = [*DOCUMENTS, LONG_DOCUMENT]
    pairs = [(QUERY, d) for d in documents]
    got = client.scores(QUERY, documents)
    # the long pair on its own: batched with the short ones, it would pad them all to 8192 tokens
    flag = np.array([*flag_reranker.compute_score(pairs[:-1], max_length=8192),
                     *flag_reranker.compute_score([pairs[-1]], max_length=8192)])  # fmt: skip
    identity = torch.nn.Identity()
    ce_raw = np.array([*cross_encoder.predict(pairs[:-1], activation_fn=identity),
                       *cross_encoder.predict([pairs[-1]], activation_fn=identity)])  # fmt: skip
    ce_sigmoid = cross_encoder.predict(pairs[:-1])  # its default activation: the sigmoid
    np.testing.assert_allclose(got.scores, flag, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.scores, ce_raw, atol=1e-4, rtol=0)
    ranked = client.rerank(QUERY, DOCUMENTS)
    np.testing.assert_allclose([r.relevance_score for r in ranked], ce_sigmoid[[r.index for r in ranked]], atol=1e-5)
    assert np.ptp(got.scores) > 1e-3  # the scores differ by more than the tolerance: the ordering means something
    assert got.token_counts[-1] == 8192 and got.full_token_counts[-1] > 8192  # the long document was truncated


def test_ranking_order_and_top_n(client: RerankClient, flag_reranker: Any) -> None:
    flag = np.array(flag_reranker.compute_score([(QUERY, d) for d in DOCUMENTS]))
    ranked = client.rerank(QUERY, DOCUMENTS)
    assert [r.index for r in ranked] == list(np.argsort(-flag, kind="stable"))
    assert all(a.score >= b.score for a, b in itertools.pairwise(ranked))
    assert [r.document for r in ranked] == [DOCUMENTS[r.index] for r in ranked]
    assert client.rerank(QUERY, DOCUMENTS, top_n=2) == ranked[:2]


def test_async_client_equals_sync(client: RerankClient, rerank_triton: TritonOptions) -> None:
    async def run() -> list[Any]:
        async with AsyncRerankClient(f"127.0.0.1:{rerank_triton.http_port}", "http") as c:
            return await c.rerank(QUERY, DOCUMENTS, top_n=3)

    got = asyncio.run(run())
    want = client.rerank(QUERY, DOCUMENTS, top_n=3)
    assert [r.index for r in got] == [r.index for r in want]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-6)


def test_truncate_false_refuses_a_long_document(client: RerankClient) -> None:
    with pytest.raises(InputTooLong) as caught:
        client.scores(QUERY, [DOCUMENTS[0], LONG_DOCUMENT], truncate=False)
    assert caught.value.index == 1 and caught.value.max_tokens == 8192


# -- the proxy ----------------------------------------------------------------------------------------------------
def test_v1_rerank_shape(proxy: Service, client: RerankClient) -> None:
    body = {"model": RERANKER, "query": QUERY, "documents": [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]],
            "top_n": 3, "return_documents": True}  # fmt: skip
    answer = httpx.post(f"{proxy.url}/v1/rerank", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    want = client.rerank(QUERY, DOCUMENTS, top_n=3)
    assert data["model"] == RERANKER and data["id"]
    assert [r["index"] for r in data["results"]] == [r.index for r in want]
    np.testing.assert_allclose([r["relevance_score"] for r in data["results"]], [_sigmoid(r.score) for r in want],
                               atol=1e-6)  # fmt: skip
    assert [r["document"]["text"] for r in data["results"]] == [DOCUMENTS[r.index] for r in want]
    assert data["usage"]["total_tokens"] == client.scores(QUERY, DOCUMENTS).total_tokens
    plain = httpx.post(f"{proxy.url}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=60).json()
    assert len(plain["results"]) == len(DOCUMENTS) and "document" not in plain["results"][0]  # model optional


def test_tei_rerank_shape(proxy: Service, client: RerankClient) -> None:
    want = client.rerank(QUERY, DOCUMENTS)
    answer = httpx.post(f"{proxy.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True,
                                                     "return_text": True}, timeout=60)  # fmt: skip
    assert answer.status_code == 200, answer.text
    ranks = answer.json()
    assert [r["index"] for r in ranks] == [r.index for r in want]
    np.testing.assert_allclose([r["score"] for r in ranks], [r.score for r in want], atol=1e-6)
    assert [r["text"] for r in ranks] == [r.document for r in want]
    default = httpx.post(f"{proxy.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS}, timeout=60).json()
    np.testing.assert_allclose([r["score"] for r in default], [_sigmoid(r.score) for r in want], atol=1e-6)
    assert set(default[0]) == {"index", "score"}
    root = httpx.post(f"{proxy.url}/", json={"query": QUERY, "texts": DOCUMENTS}, timeout=60)  # TEI's POST /
    assert root.status_code == 200, root.text
    assert [r["index"] for r in root.json()] == [r["index"] for r in default]
    np.testing.assert_allclose([r["score"] for r in root.json()], [r["score"] for r in default], atol=1e-6)


def test_a_thousand_documents_in_one_call(proxy: Service, client: RerankClient) -> None:
    documents = [f"文档 {i}：{DOCUMENTS[i % len(DOCUMENTS)]}" for i in range(1000)]
    answer = httpx.post(f"{proxy.url}/v1/rerank", json={"query": QUERY, "documents": documents, "top_n": 10},
                        timeout=300)  # fmt: skip
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    scores = client.scores(QUERY, documents).scores
    best = sorted(range(1000), key=lambda i: (-float(scores[i]), i))[:10]
    assert [r["index"] for r in results] == best
    np.testing.assert_allclose([r["relevance_score"] for r in results], [_sigmoid(float(scores[i])) for i in best],
                               atol=1e-6)  # fmt: skip


def test_long_documents_through_the_proxy(proxy: Service) -> None:
    body = {"query": QUERY, "documents": [DOCUMENTS[0], LONG_DOCUMENT]}
    assert httpx.post(f"{proxy.url}/v1/rerank", json=body, timeout=60).status_code == 200
    refused = httpx.post(f"{proxy.url}/v1/rerank", json=body | {"truncate": False}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    tei = httpx.post(f"{proxy.url}/rerank", json={"query": QUERY, "texts": [LONG_DOCUMENT], "truncate": False},
                     timeout=60)  # fmt: skip
    assert tei.status_code >= 400 and "8192" in tei.text


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/rerank", {"query": "", "documents": ["a"]}, 400, "invalid_value"),
        ("/v1/rerank", {"query": "q", "documents": []}, 400, "invalid_value"),
        ("/v1/rerank", {"query": "q", "documents": ["a", ""]}, 400, "invalid_value"),
        ("/v1/rerank", {"query": "q", "documents": ["a"] * 1501}, 400, "too_many_inputs"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, 400, "invalid_value"),
        ("/v1/rerank", {"query": "q", "documents": [1]}, 400, "invalid_value"),
        ("/v1/rerank", {"model": "all-MiniLM-L6-v2", "query": "q", "documents": ["a"]}, 400, "model_not_reranker"),
        ("/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]}, 404, "model_not_found"),
        ("/v1/embeddings", {"model": RERANKER, "input": "q"}, 400, "model_not_embedding"),
    ],
)
def test_bad_requests_get_typed_errors(proxy: Service, path: str, body: dict[str, Any], status: int,
                                       code: str) -> None:  # fmt: skip
    answer = httpx.post(f"{proxy.url}{path}", json=body, timeout=60)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


def test_tei_rerank_errors_in_tei_shape(proxy: Service) -> None:
    answer = httpx.post(f"{proxy.url}/rerank", json={"query": "q", "texts": []}, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["error_type"] == "Empty" and "texts" in error["error"]


def test_rerankers_are_not_listed_as_embedding_models(proxy: Service) -> None:
    ids = [card["id"] for card in httpx.get(f"{proxy.url}/v1/models", timeout=10).json()["data"]]
    assert RERANKER not in ids and "all-MiniLM-L6-v2" in ids
    listed = httpx.get(f"{proxy.url}/v1/rerank/models", timeout=10).json()["data"]
    assert listed == [{"id": RERANKER, "max_tokens": 8192}]


# -- the web page's rerank panel ----------------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: ./install.sh --with-bench-tools")
def test_web_page_rerank_panel_orders_as_the_api(proxy: Service, client: RerankClient) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox",
                                                                                  "--disable-gpu"])  # fmt: skip
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{proxy.url}/ui/")
        page.wait_for_function("() => document.body.dataset.rerankers === '1'")
        page.click("#tab-rerank")
        page.fill("#rerank-query", QUERY)
        page.fill("#rerank-documents", "\n".join(DOCUMENTS))
        before = int(page.evaluate("Number(document.body.dataset.seq || 0)"))
        page.click("#rerank")
        page.wait_for_function(f"() => Number(document.body.dataset.seq || 0) > {before}", timeout=60_000)
        indices = [int(i) for i in page.eval_on_selector_all("#rerank-list li", "els => els.map(e => e.dataset.index)")]
        shown = page.eval_on_selector_all("#rerank-list .rerank-score", "els => els.map(e => e.textContent)")
        browser.close()
    want = client.rerank(QUERY, DOCUMENTS)
    assert indices == [r.index for r in want] and not errors
    assert shown == [f"{r.relevance_score:.4f}" for r in want]


# -- the benchmark's quality check ----------------------------------------------------------------------------
def test_quality_check_ranks_through_the_live_service(proxy: Service, client: RerankClient) -> None:
    from bge_triton.bench.rerank_bench import load_candidates, quality_metrics, rank_with_service

    items = load_candidates(3)
    assert [len(i.documents) for i in items] == [11, 11, 11] and all(i.positives == {0} for i in items)
    rankings = asyncio.run(rank_with_service(proxy.url, items, reranker=RERANKER, embedder="all-MiniLM-L6-v2"))
    for item, ranked in zip(items, rankings["reranker"], strict=True):
        assert ranked == [r.index for r in client.rerank(item.query, item.documents)]
    assert all(sorted(r) == list(range(11)) for r in rankings["embedder"])
    first = [ranked.index(0) + 1 for ranked in rankings["reranker"]]  # 1-based rank of each positive
    want = sum(1 / r for r in first if r <= 10) / len(first)
    assert quality_metrics(rankings["reranker"], items)["mrr@10"] == pytest.approx(want, abs=1e-4)


# -- a BERT cross-encoder (token type ids) ------------------------------------------------------------------------
def test_a_bert_cross_encoder_exports_with_token_type_ids(tmp_path: Path) -> None:
    """bge-large-zh-v1.5's BERT config and tokenizer as a one-label classifier (random weights, scaled down): the
    pair's token types (0 for `[CLS] q [SEP]`, 1 for `d [SEP]`) reach the graph, and the served pipeline's scores
    equal CrossEncoder's."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    from bge_triton.export.rerank_export import OnnxRerankPipeline
    from bge_triton.package_data import model_config_dir

    source = model_config_dir("bge-large-zh-v1.5")
    config = BertConfig.from_pretrained(str(source), num_labels=1, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128)  # fmt: skip
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
        model.bert.embeddings.token_type_embeddings.weight.mul_(20.0)  # token types that matter to the score
    checkpoint = tmp_path / "bert-reranker"
    model.save_pretrained(str(checkpoint))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, checkpoint / name)
    result = export_model(str(checkpoint), tmp_path / "repository", name="bert-reranker")
    assert result.facts.task == "rerank" and result.facts.uses_token_type_ids and result.facts.max_tokens == 512
    encoder = parse_config((tmp_path / "repository" / "bert-reranker-encoder" / "config.pbtxt").read_text())
    assert [i.name for i in encoder.input] == ["input_ids", "attention_mask", "token_type_ids"]
    graph = tmp_path / "repository" / "bert-reranker-encoder" / "1" / "model.onnx"
    pipeline = OnnxRerankPipeline(checkpoint / "tokenizer.json", graph, result.facts)
    pairs = [(QUERY, d) for d in DOCUMENTS]
    reference = CrossEncoder(str(checkpoint), device="cpu").predict(pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(pipeline.scores(pairs), reference, atol=1e-4, rtol=0)
    batch = pipeline.tokenizer.encode_pairs(["问"], ["答案"])
    assert batch.token_type_ids[0, : batch.token_count[0]].tolist() == [0, 0, 0, 1, 1, 1]


def test_pair_truncation_cuts_the_document_first_and_a_long_query_to_three_quarters(rerank_checkpoint: Path) -> None:
    from tokenizers import Tokenizer

    from bge_triton.triton_models.pair_tokenizer import PairTokenizer

    tokenizer_json = rerank_checkpoint / "tokenizer.json"
    pairs = PairTokenizer(tokenizer_json, max_tokens=32, pad_token_id=1)
    plain = Tokenizer.from_file(str(tokenizer_json))
    query, document = "如何部署向量模型", "用 Triton 部署嵌入模型，前面放一个 OpenAI 兼容的代理。" * 5
    q_ids = plain.encode(query, add_special_tokens=False).ids
    d_ids = plain.encode(document, add_special_tokens=False).ids
    batch = pairs.encode_pairs([query], [document])
    ids = batch.input_ids[0, : batch.token_count[0]].tolist()
    room = 32 - 4 - len(q_ids)  # <s> q </s></s> d </s>
    assert ids == [0, *q_ids, 2, 2, *d_ids[:room], 2]  # the whole query, the document's start
    assert batch.full_token_count[0] == len(q_ids) + len(d_ids) + 4
    long_query = "向量模型的部署问题" * 10
    lq_ids = plain.encode(long_query, add_special_tokens=False).ids
    assert len(lq_ids) > 24
    batch = pairs.encode_pairs([long_query], [document])
    ids = batch.input_ids[0, : batch.token_count[0]].tolist()
    assert ids == [0, *lq_ids[:24], 2, 2, *d_ids[:4], 2]  # FlagReranker: the query to 32 * 3 // 4 tokens
