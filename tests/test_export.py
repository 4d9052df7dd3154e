"""Export: ONNX graphs, parity report, precisions, failure modes, the bench-model path."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bge_triton import cli
from bge_triton.export import exporter, parity
from bge_triton.export.bench_model import make_bench_model
from bge_triton.export.checkpoint import (
    MINILM_ID,
    CheckpointError,
    minilm_dir,
    resolve_checkpoint,
)
from bge_triton.export.exporter import ExportResult, ParityError, export_model
from bge_triton.export.onnx_export import INT8_SCOPES, fused_operators
from bge_triton.export.parity import PROBE_TEXTS, OnnxPipeline, TorchReference
from bge_triton.model_facts import read_facts
from bge_triton.package_data import model_config_dir


def test_parity_report_beside_the_encoder(exported: ExportResult) -> None:
    report = json.loads((exported.ensemble_dir.parent / "all-MiniLM-L6-v2-encoder" / "parity.json").read_text())
    assert report["texts"] == len(PROBE_TEXTS)
    assert report["min_cosine"] >= 0.9999 and report["passed"] is True
    assert report["max_abs_diff"] < 1e-4
    assert {"mean_cosine", "threshold", "precision"} <= set(report)
    assert report["optimized"] is True  # the default


def _onnx_ops(graph_path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(graph_path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _has_batch_and_sequence_axes(graph_path: Path) -> bool:
    graph = onnx.load(str(graph_path)).graph
    return all(
        [d.dim_param for d in t.type.tensor_type.shape.dim][:2] == ["batch", "sequence"]
        for t in [*graph.input, *graph.output]
    )


def test_optimized_encoder_has_fused_transformer_ops(exported: ExportResult) -> None:
    """The default export runs ONNX Runtime's transformer optimiser: 6 layers of fused com.microsoft ops."""
    model = exported.ensemble_dir.parent / "all-MiniLM-L6-v2-encoder/1/model.onnx"
    fused = fused_operators(model)
    assert fused.get("Attention") == 6 and fused.get("SkipLayerNormalization") == 12, fused
    assert fused.get("BiasGelu") == 6 and fused.get("EmbedLayerNormalization") == 1, fused
    assert "Softmax" not in _onnx_ops(model)  # no attention left unfused
    assert exported.parity.optimized and exported.parity.min_cosine >= 0.9999


def test_encoder_graph_has_dynamic_batch_and_sequence_axes(exported: ExportResult) -> None:
    graph = onnx.load(str(exported.ensemble_dir.parent / "all-MiniLM-L6-v2-encoder/1/model.onnx"))
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 17
    for tensor in [*graph.graph.input, *graph.graph.output]:
        dims = tensor.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and dims[1].dim_param == "sequence", tensor.name
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]


def test_facts_written_to_the_repository(exported: ExportResult) -> None:
    facts = read_facts(exported.ensemble_dir)
    assert facts == exported.facts
    assert (facts.dim, facts.max_tokens, facts.pooling) == (384, 256, "mean")


@pytest.mark.parametrize(("precision", "floor"), [("fp16", 0.999), ("int8", 0.99)])
def test_reduced_precisions_pass_their_parity_floor(tmp_path: Path, precision: str, floor: float) -> None:
    result = export_model(MINILM_ID, tmp_path / "repo", name="m", precision=precision)
    assert result.parity.precision == precision and result.parity.threshold == floor
    assert result.parity.min_cosine >= floor
    assert json.loads((tmp_path / "repo/m-encoder/parity.json").read_text())["precision"] == precision
    assert read_facts(result.ensemble_dir).precision == precision
    encoder = tmp_path / "repo/m-encoder/1/model.onnx"
    assert result.parity.optimized and _has_batch_and_sequence_axes(encoder)
    ops = _onnx_ops(encoder)
    assert ops.get("SkipLayerNormalization") == 12, ops
    if precision == "int8":
        assert result.parity.int8_scope in INT8_SCOPES
        # The scope's name-based exclusion still finds the FFN MatMuls after fusion (QKV is in QAttention).
        kept_fp32 = {"all-matmuls": 0, "keep-ffn-output-fp32": 6, "attention-only": 12}[result.parity.int8_scope]
        assert ops.get("QAttention") == 6 and ops.get("MatMulInteger") == 18 - kept_fp32, ops
        fp32_matmuls = [n.name for n in onnx.load(str(encoder)).graph.node if n.op_type == "MatMul"]
        assert len(fp32_matmuls) == kept_fp32
        assert all("/intermediate/" in n or "/output/dense/" in n for n in fp32_matmuls)
    else:
        assert ops.get("Attention") == 6, ops


def test_no_optimize_exports_the_plain_graph(tmp_path: Path) -> None:
    code = cli.main(["export", "--model", MINILM_ID, "--name", "m", "--no-optimize", "--repository", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "m-encoder/parity.json").read_text())
    assert report["optimized"] is False and report["passed"] and report["min_cosine"] >= 0.9999
    encoder = tmp_path / "m-encoder/1/model.onnx"
    assert fused_operators(encoder) == {} and _has_batch_and_sequence_axes(encoder)


def test_optimized_graph_failing_parity_falls_back_to_the_plain_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_compare = exporter.compare

    def optimized_fails(*args: object, **kwargs: object) -> parity.ParityReport:
        report = real_compare(*args, **kwargs)
        return dataclasses.replace(report, passed=report.passed and not report.optimized)

    monkeypatch.setattr(exporter, "compare", optimized_fails)
    result = export_model(MINILM_ID, tmp_path / "repo", name="m")
    assert result.parity.passed and not result.parity.optimized
    assert fused_operators(tmp_path / "repo/m-encoder/1/model.onnx") == {}


def test_optimizer_failure_keeps_the_plain_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("no fusion for you")

    monkeypatch.setattr(exporter, "optimize_encoder", broken)
    result = export_model(MINILM_ID, tmp_path / "repo", name="m")
    assert result.parity.passed and not result.parity.optimized


def test_export_fails_nonzero_when_parity_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(parity.PARITY_THRESHOLDS, "fp32", 1.5)  # unreachable
    with pytest.raises(ParityError, match="parity check failed"):
        export_model(MINILM_ID, tmp_path / "repo", name="m")
    assert not (tmp_path / "repo" / "m").exists()  # nothing half-written
    code = cli.main(["export", "--model", MINILM_ID, "--repository", str(tmp_path / "repo")])
    assert code == 1


def test_onnx_pipeline_truncates_like_transformers(exported: ExportResult) -> None:
    repo = exported.ensemble_dir.parent
    pipeline = OnnxPipeline(
        repo / "all-MiniLM-L6-v2-tokenizer/1/tokenizer.json",
        repo / "all-MiniLM-L6-v2-encoder/1/model.onnx",
        repo / "all-MiniLM-L6-v2-pooling/1/model.onnx",
        exported.facts,
    )
    texts = ["short", "word " * 800, "word " * 1000]
    batch = pipeline.tokenizer.encode(texts)
    ref = TorchReference(minilm_dir(), exported.facts)
    assert batch.token_count.tolist() == ref.token_counts(texts) == [3, 256, 256]
    # Exact counts up to 16 characters per window token (4,096 here); beyond, the count of the clipped prefix
    # (a lower bound, still over the window).
    full = batch.full_token_count.tolist()
    assert full[:2] == [3, 802] and 256 < full[2] < 1002
    assert batch.input_ids.shape[1] == 256 and batch.input_ids.shape[1] % 8 == 0
    cos = parity.cosine_rows(pipeline.embed(texts), ref.embed(texts))
    assert cos.min() >= 0.9999


def test_local_checkpoint_directory_and_missing_paths(tmp_path: Path) -> None:
    assert resolve_checkpoint(str(minilm_dir())) == minilm_dir()
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        resolve_checkpoint(str(tmp_path))


def _offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}


def test_hub_id_offline_fails_in_one_clear_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bge_triton", "export", "--model", "BAAI/bge-large-zh-v1.5", "--repository",
         str(tmp_path / "repo")],
        env=_offline_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert "BAAI/bge-large-zh-v1.5" in errors[0] and "local directory" in errors[0]
    assert "Traceback" not in out.stderr


def test_hub_id_loads_from_the_hub_cache_offline(tmp_path: Path) -> None:
    """The real hub code path (snapshot_download) resolves a cached repo without network."""
    snapshot = tmp_path / "hf/hub/models--acme--minilm/snapshots/0123456789abcdef"
    shutil.copytree(minilm_dir(), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs/main").write_text("0123456789abcdef")
    code = "from bge_triton.export.checkpoint import resolve_checkpoint; print(resolve_checkpoint('acme/minilm'))"
    out = subprocess.run([sys.executable, "-c", code], env=_offline_env(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == snapshot


def test_bench_model_goes_through_the_same_export(tmp_path: Path) -> None:
    """A random-init model from bge-large-zh-v1.5's config and tokenizer (shrunk here to stay fast)."""
    config_dir = tmp_path / "bge-config"
    shutil.copytree(model_config_dir("bge-large-zh-v1.5"), config_dir)
    cfg = json.loads((config_dir / "config.json").read_text())
    cfg |= {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    (config_dir / "config.json").write_text(json.dumps(cfg))
    ckpt = make_bench_model(config_dir, tmp_path / "bge-large-zh-v1.5", seed=0)
    result = export_model(str(ckpt), tmp_path / "repo")
    facts = result.facts
    assert facts.name == "bge-large-zh-v1.5" and facts.dim == 64 and facts.max_tokens == 512
    assert facts.pooling == "cls" and facts.normalize
    assert facts.query_instruction == "为这个句子生成表示以用于检索相关文章："
    assert result.parity.min_cosine >= 0.9999
    # Same seed, same weights: the random model is reproducible.
    again = make_bench_model(config_dir, tmp_path / "again", seed=0)
    ref_a = TorchReference(ckpt, facts).embed(["向量"])
    ref_b = TorchReference(again, facts).embed(["向量"])
    np.testing.assert_allclose(ref_a, ref_b, atol=1e-6)


def test_score_bands_are_measured_at_export(exported: ExportResult) -> None:
    """MiniLM's cosines on ~100 English STS-B pairs rise with the human score (export/score_bands.py); the web page
    reads its score words and near-duplicate threshold from these bands."""
    bands = exported.facts.score_bands_dict()
    assert bands is not None and bands["input_type"] == "passage" and set(bands["languages"]) == {"zh", "en"}
    en = bands["languages"]["en"]
    assert en["source"] == "en-stsbenchmark.tsv.gz" and en["pairs"] == 102 and en["ordered"]
    medians = {b["label"]: b["median"] for b in en["bands"]}
    assert medians["unrelated"] < 0.5 < medians["related"] < medians["paraphrase"], medians
    assert medians["unrelated"] < en["thresholds"]["related"] < medians["related"]
    assert medians["related"] < en["thresholds"]["paraphrase"] < medians["paraphrase"]
    assert read_facts(exported.ensemble_dir).score_bands_dict() == bands
