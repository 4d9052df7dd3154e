"""`bge-triton export`: checkpoint -> ONNX -> parity check -> Triton model repository."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bge_triton.canary import CANARY_TEXTS, Canary
from bge_triton.evaluation.datasets import DatasetError
from bge_triton.model_facts import ModelFacts, read_facts
from bge_triton.triton_models.numpy_pooling import numpy_pooling_runner
from bge_triton.triton_models.torch_runner import torch_runner

from .checkpoint import default_name, resolve_checkpoint
from .gpu_target import ExportOptionsError, check_export_options
from .m3_heads import export_m3_heads, load_m3_heads, unused_token_ids
from .model_configs import BatchingOptions, M3HeadFiles, Target
from .onnx_export import (
    EXTERNAL_DATA_THRESHOLD_BYTES,
    INT8_SCOPES,
    config_attention_shape,
    convert_precision,
    encoder_input_names,
    export_encoder,
    export_pooling,
    load_encoder,
    optimize_encoder,
)
from .parity import (
    PARITY_THRESHOLDS,
    PROBE_TEXTS,
    M3OnnxPipeline,
    M3TorchReference,
    M3Vectors,
    OnnxPipeline,
    ParityReport,
    TorchReference,
    compare,
    compare_m3,
)
from .repository import TorchEncoder, write_repository
from .score_bands import measure, to_text
from .torch_engine import check_engine_options

log = logging.getLogger("bge_triton.export")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch reference closely enough."""

    def __init__(self, report: ParityReport):
        m3 = report.m3
        heads = (
            f"; bge-m3 heads: sparse max abs diff {m3.sparse_max_abs_diff:.3g}, ColBERT score diff "
            f"{m3.colbert_score_max_diff:.3g}, ColBERT count mismatches {m3.colbert_length_mismatches} "
            f"(threshold {m3.threshold})"
            if m3 is not None and not m3.passed
            else ""
        )
        super().__init__(
            f"parity check failed: min cosine {report.min_cosine:.6f} (threshold {report.threshold}, "
            f"{report.precision}, {report.texts} texts, max abs diff {report.max_abs_diff:.3g}){heads}"
        )
        self.report = report


@dataclass
class ExportResult:
    facts: ModelFacts
    ensemble_dir: Path
    parity: ParityReport
    seconds: float


def export_model(
    model: str,
    repository: Path,
    *,
    name: str | None = None,
    precision: str = "fp32",
    target: Target = "local",
    opts: BatchingOptions | None = None,
    optimize: bool = True,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES,
    engine: str = "onnxruntime",
    device: str = "cpu",
) -> ExportResult:
    """Export `model` into `repository`; `optimize` runs ONNX Runtime's transformer optimiser (fused
    attention, skip-layernorm, bias-gelu) on the fp32 graph before any precision conversion. When the
    optimised graph misses the parity floor (or the optimiser fails), the unoptimised graph is tried.

    An encoder whose weights exceed `external_data_threshold` bytes is written as `model.onnx` +
    `model.onnx.data` (bge-m3's fp32 encoder is over protobuf's 2 GiB; 0 forces it for any model).
    A bge-m3 checkpoint (`facts.m3_heads`) also gets its sparse/ColBERT head models and ensembles, and the
    parity check covers the heads' outputs against FlagEmbedding's maths.

    `engine="torch"` keeps the checkpoint itself as the encoder step (`export/torch_engine.py`; `device` cpu or
    cuda): no encoder graph, the same parity check against the PyTorch FP32 reference."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    check_export_options(precision, target, opts is not None and opts.tensorrt)  # before minutes of work
    started = time.perf_counter()
    checkpoint = resolve_checkpoint(model)
    facts = ModelFacts.from_checkpoint(checkpoint, name=name or default_name(model), source=model, precision=precision)
    if facts.task == "rerank":  # a cross-encoder: export/rerank_export.py
        return _export_reranker(checkpoint, repository, facts, engine, target, opts, optimize, external_data_threshold)
    dtype = check_engine_options(engine, device, precision, target, facts.m3_heads)
    if engine == "torch":
        return _export_torch_engine(checkpoint, repository, dataclasses.replace(facts, precision=dtype), device, opts)
    log.info(
        "exporting %s from %s: dim %d, max %d tokens, %s pooling%s, %s%s, target %s%s",
        facts.name, checkpoint, facts.dim, facts.max_tokens, facts.pooling,
        " + normalize" if facts.normalize else "", precision, ", optimized" if optimize else "", target,
        ", bge-m3 sparse + ColBERT heads" if facts.m3_heads else "",
    )  # fmt: skip
    torch_model = load_encoder(checkpoint)
    with tempfile.TemporaryDirectory(prefix="bge-triton-export-") as tmp_dir:
        tmp = Path(tmp_dir)
        tokenizer_json = _tokenizer_json(checkpoint, tmp)
        plain = export_encoder(
            torch_model,
            facts,
            tmp / "encoder.fp32.onnx",
            fusable_attention=optimize,
            external_data_threshold=external_data_threshold,
        )
        pooling = export_pooling(facts, tmp / "pooling.onnx")
        m3_heads: M3HeadFiles | None = None
        m3_reference: M3Vectors | None = None
        if facts.m3_heads:
            m3_layers = load_m3_heads(checkpoint)
            m3_heads = export_m3_heads(m3_layers, facts, tmp, unused_token_ids(checkpoint, tokenizer_json))
        graphs: list[tuple[Path, bool]] = [(plain, False)]
        if optimize:
            try:
                heads, hidden = config_attention_shape(checkpoint)
                optimized = optimize_encoder(plain, tmp / "encoder.fp32.opt.onnx", num_heads=heads, hidden_size=hidden)
                graphs.insert(0, (optimized, True))
            except Exception as exc:  # the optimiser is a speed-up, never a reason to fail the export
                log.warning("transformer optimiser failed (%r); keeping the unoptimised graph", exc)
        log.info("checking parity against PyTorch on %d probe texts", len(PROBE_TEXTS))
        if facts.m3_heads:
            m3_reference = M3TorchReference(checkpoint, facts, model=torch_model, heads=m3_layers).encode(PROBE_TEXTS)
            reference = m3_reference.dense
        else:
            reference = TorchReference(checkpoint, facts, model=torch_model).embed(PROBE_TEXTS)
        for fp32, is_optimized in graphs:
            for scope in INT8_SCOPES if precision == "int8" else ("",):
                suffix = ".opt" if is_optimized else ""
                encoder = convert_precision(
                    fp32, precision, tmp / f"encoder.{precision}{suffix}.onnx", int8_scope=scope, optimized=is_optimized
                )
                if m3_heads is not None and m3_reference is not None:
                    m3_candidate = M3OnnxPipeline(tokenizer_json, encoder, pooling, m3_heads, facts).encode(PROBE_TEXTS)
                    report = compare(reference, m3_candidate.dense, precision, int8_scope=scope, optimized=is_optimized)
                    m3 = compare_m3(m3_reference, m3_candidate, precision)
                    report = dataclasses.replace(report, m3=m3, passed=report.passed and m3.passed)
                else:
                    candidate = OnnxPipeline(tokenizer_json, encoder, pooling, facts).embed(PROBE_TEXTS)
                    report = compare(reference, candidate, precision, int8_scope=scope, optimized=is_optimized)
                log.info(
                    "parity %s%s%s: min cosine %.6f, mean %.6f, max abs diff %.3g (threshold %s)",
                    "ok" if report.passed else "FAILED", " (optimized graph)" if is_optimized else "",
                    f" (int8 scope {scope})" if scope else "",
                    report.min_cosine, report.mean_cosine, report.max_abs_diff, report.threshold,
                )  # fmt: skip
                if report.m3 is not None:
                    log.info(
                        "bge-m3 heads: sparse max abs diff %.3g (%d of %d ids differ), ColBERT score max diff %.3g, "
                        "vector max abs diff %.3g, %d count mismatches (threshold %s)",
                        report.m3.sparse_max_abs_diff, report.m3.sparse_id_mismatches, report.m3.sparse_ids,
                        report.m3.colbert_score_max_diff, report.m3.colbert_max_abs_diff,
                        report.m3.colbert_length_mismatches, report.m3.threshold,
                    )  # fmt: skip
                if report.passed:
                    break
            if report.passed:
                break
            if is_optimized:
                log.warning("the optimised graph misses the parity floor; trying the unoptimised graph")
        if not report.passed:
            raise ParityError(report)
        facts = dataclasses.replace(facts, score_bands=_score_bands(tokenizer_json, encoder, pooling, m3_heads, facts))
        facts = dataclasses.replace(facts, canary=_canary(TorchReference(checkpoint, facts, model=torch_model), facts))
        ensemble_dir = write_repository(
            repository,
            facts,
            tokenizer_json=tokenizer_json,
            encoder_onnx=encoder,
            pooling_onnx=pooling,
            input_names=encoder_input_names(facts),
            target=target,
            opts=opts,
            parity_json=report.to_json(),
            m3_heads=m3_heads,
            device=device,  # type: ignore[arg-type]
        )
    seconds = time.perf_counter() - started
    log.info("wrote %s (%.1f s)", ensemble_dir.parent, seconds)
    return ExportResult(read_facts(ensemble_dir), ensemble_dir, report, seconds)  # with the export's fingerprint


def _export_reranker(
    checkpoint: Path, repository: Path, facts: ModelFacts, engine: str, target: Target, opts: BatchingOptions | None,
    optimize: bool, external_data_threshold: int,
) -> ExportResult:  # fmt: skip
    from .rerank_export import export_reranker

    if engine != "onnxruntime":
        raise ExportOptionsError(f"{facts.name} is a reranker: it exports with --engine onnxruntime only")
    with tempfile.TemporaryDirectory(prefix="bge-triton-export-") as tmp_dir:
        return export_reranker(
            checkpoint, repository, facts, tokenizer_json=_tokenizer_json(checkpoint, Path(tmp_dir)), target=target,
            opts=opts, optimize=optimize, external_data_threshold=external_data_threshold,
        )  # fmt: skip


def _export_torch_engine(
    checkpoint: Path, repository: Path, facts: ModelFacts, device: str, opts: BatchingOptions | None
) -> ExportResult:
    """The torch engine: parity of the served pipeline (tokenizer -> transformers encoder -> numpy pooling) against
    the PyTorch FP32 reference, score bands, then the repository; no ONNX graph is made."""
    started = time.perf_counter()
    names = encoder_input_names(facts)
    with tempfile.TemporaryDirectory(prefix="bge-triton-export-") as tmp_dir:
        tmp = Path(tmp_dir)
        tokenizer_json = _tokenizer_json(checkpoint, tmp)
        runner = torch_runner(
            checkpoint, names, device=device, dtype=facts.precision, pad_values={"input_ids": facts.pad_token_id}
        )
        pooling = numpy_pooling_runner(facts.pooling, facts.normalize)
        pipeline = OnnxPipeline(tokenizer_json, None, None, facts, encoder=runner, pooling=pooling)
        log.info(
            "checking parity of the torch engine (%s, %s) on %d probe texts", device, facts.precision, len(PROBE_TEXTS)
        )
        reference = TorchReference(checkpoint, facts).embed(PROBE_TEXTS)
        report = compare(reference, pipeline.embed(PROBE_TEXTS), facts.precision)
        log.info(
            "parity %s: min cosine %.6f, mean %.6f, max abs diff %.3g (threshold %s)", "ok" if report.passed else
            "FAILED", report.min_cosine, report.mean_cosine, report.max_abs_diff, report.threshold,
        )  # fmt: skip
        if not report.passed:
            raise ParityError(report)
        facts = dataclasses.replace(facts, score_bands=_bands_text(pipeline.embed, facts))
        facts = dataclasses.replace(facts, canary=_canary(TorchReference(checkpoint, facts), facts))
        encoder = TorchEncoder(checkpoint, device=device, dtype=facts.precision)  # type: ignore[arg-type]
        ensemble_dir = write_repository(
            repository, facts, tokenizer_json=tokenizer_json, encoder_onnx=None, pooling_onnx=None,
            input_names=names, opts=opts, parity_json=report.to_json(), torch_encoder=encoder,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    log.info("wrote %s with the torch engine on %s (%.1f s)", ensemble_dir.parent, device, seconds)
    return ExportResult(read_facts(ensemble_dir), ensemble_dir, report, seconds)  # with the export's fingerprint


def _canary(reference: TorchReference, facts: ModelFacts) -> str:
    """The start-up canary (bge_triton/canary.py): its texts as the proxy sends them (passages), embedded by the
    PyTorch FP32 reference, with this precision's parity floor."""
    vectors = reference.embed([facts.passage_instruction + text for text in CANARY_TEXTS])
    return Canary(CANARY_TEXTS, vectors, PARITY_THRESHOLDS[facts.precision]).to_text()


def _score_bands(
    tokenizer_json: Path, encoder: Path, pooling: Path, m3_heads: M3HeadFiles | None, facts: ModelFacts
) -> str:
    """The exported pipeline's cosines on STS pairs by gold band (export/score_bands.py), as the facts' JSON."""
    embed: Callable[[list[str]], np.ndarray]
    if m3_heads is not None:
        m3 = M3OnnxPipeline(tokenizer_json, encoder, pooling, m3_heads, facts)
        embed = lambda texts: m3.encode(texts).dense  # noqa: E731
    else:
        embed = OnnxPipeline(tokenizer_json, encoder, pooling, facts).embed
    return _bands_text(embed, facts)


def _bands_text(embed: Callable[[list[str]], np.ndarray], facts: ModelFacts) -> str:
    started = time.perf_counter()
    try:
        bands = measure(embed, facts.passage_instruction)
    except (OSError, DatasetError) as exc:  # the shipped STS sets are missing: serve without words for scores
        log.warning("score bands not measured (%s); the web page will show scores without words", exc)
        return ""
    log.info("score bands measured on STS pairs in %.1f s", time.perf_counter() - started)
    for language, found in bands["languages"].items():
        log.info(
            "score bands %s (%d %s pairs): median cosine %s; label thresholds %s",
            language, found["pairs"], found["source"],
            ", ".join(f"{b['label']} {b['median']:.3f}" for b in found["bands"]),
            ", ".join(f"{k} {v:.3f}" for k, v in found["thresholds"].items()),
        )  # fmt: skip
    return to_text(bands)


def _tokenizer_json(checkpoint: Path, tmp: Path) -> Path:
    """The checkpoint's tokenizer.json, or one converted from its slow-tokenizer files."""
    own = checkpoint / "tokenizer.json"
    if own.is_file():
        return own
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    if not tokenizer.is_fast:
        raise RuntimeError(f"{checkpoint} has no fast tokenizer (tokenizer.json) and none could be converted")
    out = tmp / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(out))
    return out
