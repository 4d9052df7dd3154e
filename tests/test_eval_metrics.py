"""`bge-triton eval` without a server: metrics on hand-computed cases, dataset loading, the proxy
backend against a mocked transport, the runner with a fake embedder, and the CLI's error lines."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import math
import socket
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from bge_triton.cli import main
from bge_triton.evaluation.datasets import (
    DATA_ENV,
    DatasetError,
    load_retrieval_jsonl,
    load_sts_tsv,
    load_task,
)
from bge_triton.evaluation.embedders import EvalServiceError, InputType, ModelInfo, ProxyEmbedder
from bge_triton.evaluation.metrics import (
    cosine_rows,
    first_hit_ranks,
    mrr_at_k,
    recall_at_k,
    retrieval_metrics,
    spearman,
    top_k,
)
from bge_triton.evaluation.runner import (
    EvalOptions,
    evaluate,
    format_table,
    resolve_sts_input_type,
    run_command,
)
from bge_triton.package_data import eval_data_dir

DATA = eval_data_dir()


# -- metrics ------------------------------------------------------------------------------------
def test_mrr_and_recall_of_known_ranks() -> None:
    ranks = [1, 2, 0, 11, 3]  # 0: not found; 11: past k=10
    assert mrr_at_k(ranks, 10) == pytest.approx((1 + 1 / 2 + 1 / 3) / 5)
    assert mrr_at_k(ranks, 1) == pytest.approx(1 / 5)
    assert mrr_at_k(ranks, 2) == pytest.approx((1 + 1 / 2) / 5)
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 5)
    assert recall_at_k(ranks, 10) == pytest.approx(3 / 5)
    assert recall_at_k(ranks, 11) == pytest.approx(4 / 5)
    assert mrr_at_k(np.array([1, 1]), 10) == 1.0
    with pytest.raises(ValueError):
        mrr_at_k([], 10)
    with pytest.raises(ValueError):
        recall_at_k([1], 0)


def test_first_hit_ranks() -> None:
    rankings = [[3, 1, 2], [0, 5, 4], [7, 8, 9], [2, 4, 6]]
    relevant = [{1}, {9}, {9, 7}, {6, 4}]
    assert first_hit_ranks(rankings, relevant).tolist() == [2, 0, 1, 2]
    with pytest.raises(ValueError):
        first_hit_ranks([[1]], [{1}, {2}])


def test_top_k_orders_by_cosine_then_index() -> None:
    corpus = np.array([[0, 1], [1, 0], [0.6, 0.8], [-1, 0], [2, 0]], dtype=np.float32)  # row 4 = row 1 scaled
    queries = np.array([[1, 0], [0, 3], [0.8, 0.6]], dtype=np.float32)
    expected = [[1, 4, 2, 0, 3], [0, 2, 1, 3, 4], [2, 1, 4, 0, 3]]  # ties (cosine 0) by index
    for chunk in (1, 2, 256):
        assert top_k(queries, corpus, 5, chunk_size=chunk).tolist() == expected
        assert top_k(queries, corpus, 2, chunk_size=chunk).tolist() == [row[:2] for row in expected]
    assert top_k(queries, corpus, 50).shape == (3, 5)  # k capped at the corpus size


def test_retrieval_metrics_end_to_end() -> None:
    corpus = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.1, 0, 0], [0.1, 1, 0, 0], [0, 0, 0.2, 1]], dtype=np.float32)
    relevant = [{0}, {0}, {3}]  # ranks: 1, 2, 1
    scores = retrieval_metrics(queries, corpus, relevant)
    assert scores == pytest.approx({"mrr@10": (1 + 0.5 + 1) / 3, "recall@1": 2 / 3, "recall@10": 1.0})


def test_spearman_known_values() -> None:
    # gold ranks with a tie: [1, 2, 3.5, 5, 3.5] -> rho = 8 / sqrt(10 * 9.5)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([0.1, 0.5, 0.9], [1, 2, 30]) == pytest.approx(1.0)
    assert spearman([0.1, 0.5, 0.9], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_cosine_rows() -> None:
    a = np.array([[1, 0], [3, 4], [1, 1]], dtype=np.float32)
    b = np.array([[2, 0], [4, -3], [-1, -1]], dtype=np.float32)
    assert cosine_rows(a, b) == pytest.approx([1.0, 0.0, -1.0], abs=1e-6)


# -- datasets -----------------------------------------------------------------------------------
def test_shipped_set_sizes() -> None:
    zh = load_task("sts-zh", DATA)
    assert len(zh) == 1361 and zh.kind == "sts"
    assert all(0 <= s <= 5 for s in zh.scores)
    en = load_task("sts-en", DATA)
    assert len(en) == 1379  # the test split only (train 5749, dev 1500)
    assert en.sentences1[0] == "A girl is styling her hair."
    retrieval = load_task("retrieval-zh", DATA)
    assert len(retrieval) == 2701 and retrieval.kind == "retrieval"
    assert len(retrieval.corpus) == len(set(retrieval.corpus)) == 7667  # pooled pos + neg, deduplicated
    assert all(len(r) == 1 for r in retrieval.relevant)


def test_limit_and_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(DATA))
    assert len(load_task("sts-en", limit=10)) == 10
    small = load_task("retrieval-zh", limit=5)
    assert len(small) == 5 and len(small.corpus) == 55  # 1 pos + 10 neg per line


def test_generic_tsv(tmp_path: Path) -> None:
    plain = tmp_path / "pairs.tsv"
    plain.write_text("s1\ts2\tlabel\na\tb\t1.5\nc\td\t4\n\n", encoding="utf-8")
    data = load_task(str(plain))
    assert (data.name, data.sentences1, data.sentences2, data.scores) == ("pairs.tsv", ["a", "c"], ["b", "d"], [1.5, 4])
    named = tmp_path / "named.tsv.gz"
    with gzip.open(named, "wt", encoding="utf-8") as handle:
        handle.write("split\tscore\tsentence1\tsentence2\ntrain\t1\tx\ty\ntest\t2\tu\tv\n")
    assert load_sts_tsv(named, split="test").sentences1 == ["u"]
    assert len(load_sts_tsv(named)) == 2
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="2 tab-separated columns"):
        load_task(str(bad))
    with pytest.raises(DatasetError, match="split"):
        load_sts_tsv(plain, split="test")
    with pytest.raises(DatasetError, match="unknown task"):
        load_task(str(tmp_path / "x.csv"))


def test_generic_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [
        {"query": "q1", "pos": ["p1"], "neg": ["n1", "p2"]},
        {"query": "q2", "pos": ["p2", "p3"], "neg": ["n1"]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    data = load_retrieval_jsonl(path)
    assert data.queries == ["q1", "q2"]
    assert data.corpus == ["p1", "n1", "p2", "p3"]
    assert data.relevant == [frozenset({0}), frozenset({2, 3})]
    path.write_text('{"query": "q", "pos": "p"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="line 1"):
        load_retrieval_jsonl(path)


# -- the runner, with a fake service ------------------------------------------------------------
class FakeEmbedder:
    """Character-count vectors; records what it was asked."""

    backend = "fake"
    url = "fake://"

    def __init__(self, passage_instruction: str | None = "") -> None:
        self.calls: list[tuple[int, InputType]] = []
        self.passage_instruction = passage_instruction
        self.closed = False

    async def connect(self) -> ModelInfo:
        return ModelInfo("fake-model", 26, "", self.passage_instruction)

    async def embed(self, texts: Sequence[str], input_type: InputType) -> np.ndarray:
        self.calls.append((len(texts), input_type))
        await asyncio.sleep(0)
        out = np.full((len(texts), 26), 0.01, dtype=np.float32)
        for row, text in enumerate(texts):
            for char in text.lower():
                if "a" <= char <= "z":
                    out[row, ord(char) - 97] += 1
        return out

    async def close(self) -> None:
        self.closed = True


def test_resolve_sts_input_type() -> None:
    bge = ModelInfo("bge", 1, "为这个句子生成表示以用于检索相关文章：", "")
    assert resolve_sts_input_type("auto", bge) == "passage"
    assert resolve_sts_input_type("auto", ModelInfo("e5", 1, "query: ", "passage: ")) == "query"
    assert resolve_sts_input_type("auto", ModelInfo("proxy", 1, "x", None)) == "passage"
    assert resolve_sts_input_type("query", ModelInfo("bge", 1, "", "")) == "query"


def test_runner_with_fake_embedder(tmp_path: Path) -> None:
    sts = tmp_path / "toy.tsv"
    sts.write_text("abc\tabc\t5\nabc\tabd\t3\nabc\txyz\t0\nhello\thelp\t4\n", encoding="utf-8")
    ret = tmp_path / "toy.jsonl"
    ret.write_text(
        json.dumps({"query": "cat", "pos": ["cats"], "neg": ["dig", "bird"]})
        + "\n"
        + json.dumps({"query": "dog", "pos": ["dogs"], "neg": ["cut"]})
        + "\n",
        encoding="utf-8",
    )
    fake = FakeEmbedder()
    options = EvalOptions(tasks=(str(sts), str(ret)), batch_size=2, concurrency=2, json_path=tmp_path / "o/r.json")
    report = evaluate(fake, options)
    assert fake.closed
    assert report.model == "fake-model" and report.sts_input_type == "passage"
    toy, toy_r = report.tasks
    assert toy.counts == {"pairs": 4, "texts": 5}  # "abc" deduplicated
    assert toy.metrics["spearman"] == pytest.approx(100.0, abs=1e-6)
    assert toy_r.counts == {"queries": 2, "corpus": 5, "texts": 7, "self_matches_excluded": 0}
    assert toy_r.metrics["recall@1"] == pytest.approx(100.0)
    assert {t for _, t in fake.calls} == {"passage", "query"}
    assert max(n for n, _ in fake.calls) <= 2
    table = format_table(report)
    assert "spearman" in table and "mrr@10" in table and "toy.tsv" in table
    assert run_command(FakeEmbedder("passage: "), options) == 0
    written = json.loads((tmp_path / "o/r.json").read_text(encoding="utf-8"))
    assert written["sts_input_type"] == "query"
    assert set(written["tasks"]) == {"toy.tsv", "toy.jsonl"}
    assert written["tasks"]["toy.jsonl"]["input_types"] == {"queries": "query", "corpus": "passage"}


# -- the proxy backend, over a mocked transport -------------------------------------------------
def _proxy_with(handler: httpx.MockTransport, **kwargs: object) -> ProxyEmbedder:
    return ProxyEmbedder("http://proxy.test:8080", transport=handler, **kwargs)  # type: ignore[arg-type]


def test_proxy_embedder_decodes_base64_and_sends_input_type() -> None:
    seen: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            card = {"id": "m", "dimensions": 2, "max_tokens": 8, "pooling": "mean", "query_instruction": "q: "}
            variants = [{**card, "id": f"m-{t}", "parent": "m", "input_type": t} for t in ("query", "passage")]
            return httpx.Response(200, json={"object": "list", "data": [card, *variants]})  # one model, 3 names
        body = json.loads(request.content)
        seen.append(body)
        data = [
            {"index": i, "embedding": base64.b64encode(np.array([i, 1], dtype="<f4").tobytes()).decode()}
            for i in range(len(body["input"]))
        ]
        return httpx.Response(200, json={"object": "list", "data": data[::-1], "model": "m"})

    async def go() -> tuple[ModelInfo, np.ndarray]:
        embedder = _proxy_with(httpx.MockTransport(handle))
        info = await embedder.connect()
        vectors = await embedder.embed(["a", "b", "c"], "query")
        await embedder.close()
        return info, vectors

    info, vectors = asyncio.run(go())
    assert info == ModelInfo("m", 2, "q: ", None)
    assert vectors.tolist() == [[0, 1], [1, 1], [2, 1]]
    assert seen == [{"model": "m", "input": ["a", "b", "c"], "input_type": "query", "encoding_format": "base64"}]


def test_proxy_embedder_error_is_one_line() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer wrong"
        error = {"message": "invalid API key\n(check it)", "type": "authentication_error", "param": None, "code": None}
        return httpx.Response(401, json={"error": error})

    async def go() -> None:
        await _proxy_with(httpx.MockTransport(handle), api_key="wrong").connect()

    with pytest.raises(EvalServiceError) as info:
        asyncio.run(go())
    assert str(info.value) == "HTTP 401 from GET http://proxy.test:8080/v1/models: invalid API key (check it)"


# -- the CLI's error lines ----------------------------------------------------------------------
def test_cli_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--task", "sts-zh", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sts-zh: data file not found:")
    assert str(tmp_path / "zh-stsb-test.tsv") in err and "\n" not in err and "Traceback" not in err
    assert main(["eval", "--task", str(tmp_path / "nope.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: nope.jsonl: data file not found: {tmp_path / 'nope.jsonl'}"


def test_cli_missing_data_file_via_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert main(["eval", "--task", "retrieval-zh"]) == 1
    assert "zh-retrieval-bge-finetune.jsonl" in capsys.readouterr().err


def test_cli_unreachable_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["eval", "--url", f"http://127.0.0.1:{port}/v1", "--task", "sts-en", "--limit", "3",
                 "--data-dir", str(DATA)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot reach the proxy at http://127.0.0.1:{port}/v1") and "\n" not in err


def test_cli_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --batch-size must be at least 1"


def test_a_query_is_not_ranked_against_its_own_copy_in_the_corpus(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [
        {"query": "a plane takes off", "pos": ["a plane is taking off"], "neg": ["a cat sleeps"]},
        {"query": "a cat sleeps", "pos": ["the cat is asleep"], "neg": ["a plane takes off"]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    data = load_retrieval_jsonl(path)
    corpus = {text: i for i, text in enumerate(data.corpus)}
    assert data.self_matches == [frozenset({corpus["a plane takes off"]}), frozenset({corpus["a cat sleeps"]})]
    # Query vectors equal their own copies (score 1), positives come next (0.8).
    vectors = {"a plane takes off": [1.0, 0.0, 0.0], "a cat sleeps": [0.0, 1.0, 0.0]}
    vectors |= {"a plane is taking off": [0.8, 0.0, 0.6], "the cat is asleep": [0.0, 0.8, 0.6]}
    q = np.array([vectors[t] for t in data.queries])
    c = np.array([vectors[t] for t in data.corpus])
    assert retrieval_metrics(q, c, data.relevant, recall_ks=(1,))["recall@1"] == 0.0  # the copy wins
    kept = retrieval_metrics(q, c, data.relevant, recall_ks=(1,), exclude=data.self_matches)
    assert kept == {"mrr@10": 1.0, "recall@1": 1.0}
