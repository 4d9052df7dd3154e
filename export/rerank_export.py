"""Export of a cross-encoder reranker (`*ForSequenceClassification`, one label): ONNX -> parity -> repository.

`export_model` hands a checkpoint whose facts say `task == "rerank"` here. The encoder graph is the whole
sequence-classification model: input_ids, attention_mask (token_type_ids for BERT) -> `logits` [batch, 1], the
raw relevance logit. Parity: the served pipeline (the pair tokenizer Triton runs, then onnxruntime on the graph)
against transformers' tokenizer + PyTorch model on probe pairs, scores within `SCORE_THRESHOLDS` (1e-4 FP32).
The repository is written by `rerank_repository.py`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bge_triton.model_facts import ModelFacts
from bge_triton.triton_models.onnx_runner import PaddedOnnxRunner
from bge_triton.triton_models.pair_tokenizer import PairTokenizer

from .model_configs import BatchingOptions, Target
from .onnx_export import (
    EXTERNAL_DATA_THRESHOLD_BYTES,
    SEQUENCE,
    _attention_implementation,
    config_attention_shape,
    convert_precision,
    encoder_input_names,
    export_module,
    optimize_encoder,
)
from .parity import ParityReport
from .rerank_repository import write_rerank_repository

if TYPE_CHECKING:
    from .exporter import ExportResult

log = logging.getLogger("bge_triton.export")
SCORE_THRESHOLDS = {"fp32": 1e-4, "fp16": 5e-2}  # max abs logit difference against PyTorch FP32
LOGITS = "logits"
# Probe pairs: Chinese, English, mixed, an empty-ish document, and a document past any window (truncated).
PROBE_PAIRS: tuple[tuple[str, str], ...] = (
    ("如何部署向量模型？", "用 Triton 部署嵌入模型，前面放一个 OpenAI 兼容的代理。"),
    ("如何部署向量模型？", "今天天气很好，我们去公园散步吧。"),
    ("what is a reranker", "A cross-encoder reads the query and the document together and outputs one score."),
    ("what is a reranker", "The weather is nice today."),
    ("向量模型 deployment", "Triton 和 nginx 🚀 deployment with dynamic batching"),
    ("短", "。"),
    ("长文档会被截断吗", "这是一个很长的文档。" * 2500),
)


class RerankerForExport(nn.Module):
    """The sequence-classification model called with keyword arguments, its logits out."""

    def __init__(self, model: nn.Module, uses_token_type_ids: bool):
        super().__init__()
        self.model = model
        self.uses_token_type_ids = uses_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.uses_token_type_ids:
            kwargs["token_type_ids"] = rest[0]
        return self.model(**kwargs).logits.float()


def load_reranker(checkpoint: Path) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint), dtype=torch.float32)
    return model.eval()


def export_reranker_graph(model: nn.Module, facts: ModelFacts, out: Path, *, fusable_attention: bool,
                          external_data_threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES) -> Path:  # fmt: skip
    """The classifier as ONNX: the encoder inputs -> `logits` [batch, 1] (dynamic batch and sequence axes)."""
    names = encoder_input_names(facts)
    dummy = [torch.full((2, 16), 100, dtype=torch.int64), torch.ones((2, 16), dtype=torch.int64),
             torch.zeros((2, 16), dtype=torch.int64)][: len(names)]  # fmt: skip
    axes = {name: {0: "batch", 1: SEQUENCE} for name in names} | {LOGITS: {0: "batch"}}
    wrapper = RerankerForExport(model, facts.uses_token_type_ids).eval()
    with _attention_implementation(model, "eager" if fusable_attention else None):
        export_module(wrapper, tuple(dummy), out, names, [LOGITS], axes,
                      external_data_threshold=external_data_threshold)  # fmt: skip
    return out


class TorchRerankReference:
    """transformers' AutoTokenizer + the PyTorch model, FlagReranker's truncation: what the service must equal."""

    def __init__(self, checkpoint: Path, facts: ModelFacts, model: nn.Module):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.model = model
        self.facts = facts

    def scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """One pair at a time (no padding), `truncation="only_second"` to the window (the probe queries are
        short: FlagReranker's 3/4-window cut of the query does not apply to them)."""
        out = []
        for query, document in pairs:
            feeds = self.tokenizer(query, document, truncation="only_second", max_length=self.facts.max_tokens,
                                   return_tensors="pt")  # fmt: skip
            if not self.facts.uses_token_type_ids:
                feeds.pop("token_type_ids", None)
            with torch.inference_mode():
                out.append(float(self.model(**feeds).logits.float().reshape(-1)[0]))
        return np.array(out, dtype=np.float64)


class OnnxRerankPipeline:
    """The served pipeline in-process: the Triton pair tokenizer's code, then the graph through the ONNX runner."""

    def __init__(self, tokenizer_json: Path, graph: Path, facts: ModelFacts):
        self.tokenizer = PairTokenizer(tokenizer_json, facts.max_tokens, facts.pad_token_id)
        self.runner = PaddedOnnxRunner(graph, pad_values={"input_ids": facts.pad_token_id})

    def scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        batch = self.tokenizer.encode_pairs([q for q, _ in pairs], [d for _, d in pairs])
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self.runner.input_names:
            feeds["token_type_ids"] = batch.token_type_ids
        return self.runner.run([feeds])[0][LOGITS].reshape(-1).astype(np.float64)


def export_reranker(
    checkpoint: Path,
    repository: Path,
    facts: ModelFacts,
    *,
    tokenizer_json: Path,
    target: Target = "local",
    opts: BatchingOptions | None = None,
    optimize: bool = True,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES,
) -> ExportResult:
    """Graph, parity (the optimised graph first, the plain one when it misses), then the repository."""
    from .exporter import ExportResult, ParityError

    if facts.precision not in SCORE_THRESHOLDS:
        raise ValueError(f"rerankers export in {' or '.join(SCORE_THRESHOLDS)}, not {facts.precision}")
    started = time.perf_counter()
    log.info("exporting reranker %s from %s: window %d tokens, %s, target %s",
             facts.name, checkpoint, facts.max_tokens, facts.precision, target)  # fmt: skip
    model = load_reranker(checkpoint)
    pairs = list(PROBE_PAIRS)
    reference = TorchRerankReference(checkpoint, facts, model).scores(pairs)
    with tempfile.TemporaryDirectory(prefix="bge-triton-export-") as tmp_dir:
        tmp = Path(tmp_dir)
        plain = export_reranker_graph(model, facts, tmp / "reranker.fp32.onnx", fusable_attention=optimize,
                                      external_data_threshold=external_data_threshold)  # fmt: skip
        graphs: list[tuple[Path, bool]] = [(plain, False)]
        if optimize:
            try:
                heads, hidden = config_attention_shape(checkpoint)
                graphs.insert(0, (optimize_encoder(plain, tmp / "reranker.fp32.opt.onnx", num_heads=heads,
                                                   hidden_size=hidden), True))  # fmt: skip
            except Exception as exc:  # a speed-up, never a reason to fail the export
                log.warning("transformer optimiser failed (%r); keeping the unoptimised graph", exc)
        for fp32, is_optimized in graphs:
            out = tmp / f"reranker.{facts.precision}.{int(is_optimized)}.onnx"
            graph = convert_precision(fp32, facts.precision, out, optimized=is_optimized)
            candidate = OnnxRerankPipeline(tokenizer_json, graph, facts).scores(pairs)
            report = score_parity(reference, candidate, facts.precision, optimized=is_optimized)
            log.info("reranker parity %s%s: max abs score diff %.3g (threshold %s) on %d pairs",
                     "ok" if report.passed else "FAILED", " (optimized graph)" if is_optimized else "",
                     report.max_abs_diff, report.threshold, len(pairs))  # fmt: skip
            if report.passed:
                break
        if not report.passed:
            raise ParityError(report)
        ensemble_dir = write_rerank_repository(
            repository, facts, tokenizer_json=tokenizer_json, encoder_onnx=graph, target=target, opts=opts,
            parity_json=report.to_json(),
        )  # fmt: skip
    seconds = time.perf_counter() - started
    log.info("wrote %s (%.1f s)", ensemble_dir.parent, seconds)
    return ExportResult(facts, ensemble_dir, report, seconds)


def score_parity(reference: np.ndarray, candidate: np.ndarray, precision: str, *, optimized: bool) -> ParityReport:
    """Scores against the PyTorch scores: max abs difference under the precision's threshold. `min_cosine` /
    `mean_cosine` hold the cosine of the two score vectors (centred: the ordering they agree on)."""
    diff = float(np.abs(reference - candidate).max())
    a, b = reference - reference.mean(), candidate - candidate.mean()
    cosine = float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-30))
    threshold = SCORE_THRESHOLDS[precision]
    return ParityReport(precision=precision, threshold=threshold, texts=len(reference), min_cosine=cosine,
                        mean_cosine=cosine, max_abs_diff=diff, passed=bool(diff <= threshold),
                        optimized=optimized)  # fmt: skip
