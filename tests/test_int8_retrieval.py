"""INT8 retrieval sanity: the quantised MiniLM retrieves what fp32 retrieves on English STS pairs.

Queries are `sentence1` of 200 STS-benchmark test pairs scored >= 4 (near paraphrases); the passage pool
is all of their `sentence2`, and a query's gold passage is its own pair's `sentence2`. Both precisions
are run through `OnnxPipeline`, the code the Triton models run.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from bge_triton.export.checkpoint import MINILM_ID
from bge_triton.export.exporter import ExportResult, export_model
from bge_triton.export.parity import OnnxPipeline
from bge_triton.model_facts import ModelFacts
from bge_triton.package_data import eval_data_dir

STS = eval_data_dir() / "en-stsbenchmark.tsv.gz"
PAIRS = 200
MIN_SCORE = 4.0


def sts_pairs(n: int = PAIRS, min_score: float = MIN_SCORE) -> tuple[list[str], list[str]]:
    """(queries, passages): passage i is query i's gold; no query or passage text repeats."""
    # Tab-separated with a header (split, genre, dataset, year, sid, score, sentence1, sentence2);
    # sentences hold bare quote characters, so no CSV quoting.
    with gzip.open(STS, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    queries: list[str] = []
    passages: list[str] = []
    for row in rows:
        if row["split"] != "test" or float(row["score"]) < min_score:
            continue
        if row["sentence1"] in queries or row["sentence2"] in passages:
            continue
        queries.append(row["sentence1"])
        passages.append(row["sentence2"])
        if len(queries) == n:
            break
    return queries, passages


def _pipeline(repo: Path, name: str, facts: ModelFacts) -> OnnxPipeline:
    return OnnxPipeline(
        repo / f"{name}-tokenizer/1/tokenizer.json",
        repo / f"{name}-encoder/1/model.onnx",
        repo / f"{name}-pooling/1/model.onnx",
        facts,
    )


def _top1(pipeline: OnnxPipeline, queries: list[str], passages: list[str]) -> np.ndarray:
    q = pipeline.embed(queries, batch_size=32)
    p = pipeline.embed(passages, batch_size=32)
    return np.argmax(q @ p.T, axis=1)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return export_model(MINILM_ID, tmp_path_factory.mktemp("int8_repository"), name="m", precision="int8")


@pytest.mark.skipif(not STS.is_file(), reason=f"{STS} is missing")
def test_int8_top1_retrieval_matches_fp32(exported: ExportResult, int8_export: ExportResult) -> None:
    queries, passages = sts_pairs()
    assert len(queries) == len(passages) == PAIRS
    fp32 = _pipeline(exported.ensemble_dir.parent, exported.facts.name, exported.facts)
    int8 = _pipeline(int8_export.ensemble_dir.parent, "m", int8_export.facts)
    assert int8_export.facts.precision == "int8" and int8_export.parity.passed

    gold = np.arange(len(queries))
    top_fp32 = _top1(fp32, queries, passages)
    top_int8 = _top1(int8, queries, passages)
    agreement = float((top_fp32 == top_int8).mean())
    acc_fp32 = float((top_fp32 == gold).mean())
    acc_int8 = float((top_int8 == gold).mean())
    summary = {
        "pairs": len(queries),
        "top1_agreement": agreement,
        "top1_accuracy_fp32": acc_fp32,
        "top1_accuracy_int8": acc_int8,
        "int8_scope": int8_export.parity.int8_scope,
        "optimized": int8_export.parity.optimized,
    }
    print(json.dumps(summary))
    assert acc_fp32 >= 0.8, summary  # the task is meaningful: fp32 MiniLM finds most paraphrases
    assert agreement >= 0.95, summary
    assert abs(acc_int8 - acc_fp32) <= 0.03, summary


@pytest.mark.skipif(not STS.is_file(), reason=f"{STS} is missing")
def test_int8_loses_at_most_one_spearman_point_on_english_stsb(
    exported: ExportResult, int8_export: ExportResult
) -> None:
    """The quality gate for int8: the full STS-B test split, Spearman x100 of cosine vs gold, fp32 vs int8."""
    from bge_triton.evaluation.datasets import load_sts_tsv
    from bge_triton.evaluation.metrics import spearman

    data = load_sts_tsv(STS, split="test")
    scores = {}
    for precision, result, name in (("fp32", exported, exported.facts.name), ("int8", int8_export, "m")):
        pipeline = _pipeline(result.ensemble_dir.parent, name, result.facts)
        a = pipeline.embed(list(data.sentences1), batch_size=64)
        b = pipeline.embed(list(data.sentences2), batch_size=64)
        scores[precision] = 100.0 * spearman((a * b).sum(axis=1), np.asarray(data.scores))
    print(json.dumps(scores))
    assert abs(scores["fp32"] - 82.03) <= 0.3, scores
    assert scores["fp32"] - scores["int8"] <= 1.0, scores
