"""The PyTorch reference embedding and the export's parity check against it.

For bge-m3 (`facts.m3_heads`) the reference also computes FlagEmbedding `BGEM3FlagModel`'s sparse and ColBERT
outputs (`M3TorchReference`, the maths of its `_sparse_embedding`/`_colbert_embedding` and `encode`'s
`_process_token_weights`/`_process_colbert_vecs`), and the exported pipeline (`M3OnnxPipeline`: the same
tokenizer, ONNX graphs and numpy post-processing the Triton models run) must match it too: sparse weights within
`M3_THRESHOLDS` on the same token ids, ColBERT vector counts equal and ColBERT scores within the same bound.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bge_triton.model_facts import ModelFacts
from bge_triton.triton_models.m3_heads import colbert_rows, sparse_rows
from bge_triton.triton_models.onnx_runner import PaddedOnnxRunner
from bge_triton.triton_models.tokenizer import TextTokenizer, TokenizedBatch

from .m3_heads import UNUSED_SPECIAL_TOKENS, M3Heads, load_m3_heads
from .model_configs import M3HeadFiles
from .onnx_export import Pooler

# Minimum cosine between the exported pipeline and PyTorch, per precision.
PARITY_THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
# bge-m3 heads: max abs difference of the sparse weights (an id kept on one side only counts with its whole
# weight) and of the ColBERT scores, per precision of the encoder (the head graphs stay fp32).
M3_THRESHOLDS = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}

# A fixed probe list: Chinese, English, mixed, emoji, odd whitespace and over-length texts.
PROBE_TEXTS: list[str] = [
    "今天天气很好，我们去公园散步吧。",
    "如何在生产环境中部署文本向量模型？",
    "样例数据-1",
    "The quick brown fox jumps over the lazy dog.",
    "Triton Inference Server batches requests dynamically.",
    "用 Triton 部署 BGE embedding 模型，QPS 提升了 3 倍。",
    "北京 is the capital of China, 上海是最大的城市。",
    "🙂👍🚀 emoji only? 😀",
    "🎉🎉🎉",
    "   leading and trailing spaces   ",
    "a",
    "向量检索" * 300,  # far beyond 512 tokens: truncated
    " ".join(["embedding"] * 700),  # over-length English
]


@dataclass
class M3Parity:
    """bge-m3's sparse and ColBERT outputs against the FlagEmbedding maths in PyTorch."""

    threshold: float
    sparse_max_abs_diff: float  # over the union of token ids (an id on one side only counts with its weight)
    sparse_id_mismatches: int  # ids kept on one side only (allowed only with weights within the threshold)
    sparse_ids: int  # ids kept by the reference, all texts
    colbert_length_mismatches: int  # texts whose vector counts differ
    colbert_max_abs_diff: float  # over the vectors' components
    colbert_score_max_diff: float  # FlagEmbedding's colbert_score, text i vs itself and vs text i+1
    passed: bool


@dataclass
class ParityReport:
    precision: str
    threshold: float
    texts: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    passed: bool
    int8_scope: str = ""  # which MatMuls were quantised (int8 only)
    optimized: bool = False  # the encoder went through ONNX Runtime's transformer optimiser (fused ops)
    m3: M3Parity | None = None  # bge-m3 only

    def to_json(self) -> str:
        data = asdict(self)
        if data["m3"] is None:
            del data["m3"]
        return json.dumps(data, indent=2) + "\n"


class TorchReference:
    """transformers' AutoTokenizer + AutoModel + the model's pooling: what the service must equal."""

    def __init__(self, checkpoint: Path, facts: ModelFacts, model: torch.nn.Module | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.facts = facts
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.model = model if model is not None else AutoModel.from_pretrained(str(checkpoint), dtype=torch.float32)
        self.model.eval()
        self.pooler = Pooler(facts.pooling, facts.normalize)

    def token_counts(self, texts: list[str]) -> list[int]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.facts.max_tokens)
        return [len(ids) for ids in enc["input_ids"]]

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=self.facts.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
            if self.facts.uses_token_type_ids and "token_type_ids" in enc:
                kwargs["token_type_ids"] = enc["token_type_ids"]
            hidden = self.model(**kwargs).last_hidden_state
            out.append(self.pooler(hidden, enc["attention_mask"]).numpy())
        return np.concatenate(out, axis=0).astype(np.float32)


class OnnxPipeline:
    """The exported pipeline run in-process with the same code the Triton models run."""

    def __init__(
        self,
        tokenizer_json: Path,
        encoder_onnx: Path | None,
        pooling_onnx: Path | None,
        facts: ModelFacts,
        *,
        threads: int = 0,
        encoder: PaddedOnnxRunner | None = None,
        pooling: PaddedOnnxRunner | None = None,
        spinning: str | None = None,
    ):
        """`encoder`, `pooling`: another engine's runners (the torch engine's) instead of onnxruntime on the
        graphs; `spinning`: onnxruntime's intra-op threads between runs (onnx_runner.spinning_mode)."""
        self.facts = facts
        self.tokenizer = TextTokenizer(tokenizer_json, facts.max_tokens, facts.pad_token_id)
        self.encoder = encoder or PaddedOnnxRunner(
            encoder_onnx, threads=threads, pad_values={"input_ids": facts.pad_token_id}, spinning=spinning
        )
        self.pooling = pooling or PaddedOnnxRunner(pooling_onnx, threads=threads, spinning=spinning)

    def hidden_states(self, texts: list[str]) -> tuple[TokenizedBatch, np.ndarray]:
        """Tokenize one batch and run the encoder: (the batch, last_hidden_state)."""
        batch = self.tokenizer.encode(texts)
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self.encoder.input_names:
            feeds["token_type_ids"] = batch.token_type_ids
        return batch, self.encoder.run([feeds])[0]["last_hidden_state"]

    def pool(self, batch: TokenizedBatch, hidden: np.ndarray) -> np.ndarray:
        pooled = self.pooling.run([{"last_hidden_state": hidden, "attention_mask": batch.attention_mask}])
        return pooled[0]["embedding"]

    def embed(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch, hidden = self.hidden_states(texts[start : start + batch_size])
            out.append(self.pool(batch, hidden))
        return np.concatenate(out, axis=0).astype(np.float32)


@dataclass
class M3Vectors:
    """bge-m3's three outputs per text, in FlagEmbedding's `encode` shapes."""

    dense: np.ndarray  # [texts, dim], normalised
    sparse: list[dict[int, float]]  # per text {token id: weight}, ids in order of first occurrence
    colbert: list[np.ndarray]  # per text [tokens - 1, colbert dim]


class M3TorchReference:
    """FlagEmbedding `BGEM3FlagModel.encode` in PyTorch: transformers' AutoTokenizer + AutoModel, the checkpoint's
    `sparse_linear`/`colbert_linear`, and `_process_token_weights`/`_process_colbert_vecs` as written there."""

    def __init__(
        self, checkpoint: Path, facts: ModelFacts, model: torch.nn.Module | None = None, heads: M3Heads | None = None
    ):
        self.reference = TorchReference(checkpoint, facts, model=model)
        self.facts = facts
        heads = heads or load_m3_heads(checkpoint)
        self.sparse_linear = heads.sparse_linear.eval()
        self.colbert_linear = heads.colbert_linear.eval()
        tokenizer = self.reference.tokenizer
        self.unused_token_ids = {
            tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[name])
            for name in UNUSED_SPECIAL_TOKENS
            if name in tokenizer.special_tokens_map
        }

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 16) -> M3Vectors:
        dense, sparse, colbert = [], [], []
        for start in range(0, len(texts), batch_size):
            enc = self.reference.tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=self.facts.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            mask = enc["attention_mask"]
            hidden = self.reference.model(input_ids=enc["input_ids"], attention_mask=mask).last_hidden_state
            dense.append(self.reference.pooler(hidden, mask).numpy())
            token_weights = torch.relu(self.sparse_linear(hidden.float())).squeeze(-1).numpy()
            for weights, ids in zip(token_weights, enc["input_ids"].tolist(), strict=True):
                sparse.append(self._process_token_weights(weights, ids))
            vectors = self.colbert_linear(hidden[:, 1:].float()) * mask[:, 1:][:, :, None].float()
            vectors = torch.nn.functional.normalize(vectors, dim=-1).numpy()
            for row, row_mask in zip(vectors, mask.numpy(), strict=True):
                colbert.append(row[: int(np.sum(row_mask)) - 1])
        return M3Vectors(np.concatenate(dense, axis=0).astype(np.float32), sparse, colbert)

    def _process_token_weights(self, token_weights: np.ndarray, input_ids: list[int]) -> dict[int, float]:
        result: dict[int, float] = defaultdict(int)
        for weight, idx in zip(token_weights, input_ids, strict=True):
            if idx not in self.unused_token_ids and weight > 0 and weight > result[idx]:
                result[idx] = float(weight)
        return dict(result)


class M3OnnxPipeline:
    """The exported bge-m3 pipeline in-process: the dense pipeline's tokenizer, encoder and pooling, then the head
    graphs and the numpy post-processing of `triton_models/m3_heads.py` (what `<name>-m3` runs)."""

    def __init__(
        self,
        tokenizer_json: Path,
        encoder_onnx: Path,
        pooling_onnx: Path,
        heads: M3HeadFiles,
        facts: ModelFacts,
        *,
        threads: int = 0,
    ):
        self.dense = OnnxPipeline(tokenizer_json, encoder_onnx, pooling_onnx, facts, threads=threads)
        self.sparse_head = PaddedOnnxRunner(heads.sparse_onnx, threads=threads)
        self.colbert_head = PaddedOnnxRunner(heads.colbert_onnx, threads=threads)
        self.unused_token_ids = heads.unused_token_ids

    def encode(self, texts: list[str], batch_size: int = 16) -> M3Vectors:
        dense, sparse, colbert = [], [], []
        for start in range(0, len(texts), batch_size):
            batch, hidden = self.dense.hidden_states(texts[start : start + batch_size])
            dense.append(self.dense.pool(batch, hidden))
            weights = self.sparse_head.run([{"last_hidden_state": hidden}])[0]["token_weights"]
            ids, kept = sparse_rows(batch.input_ids, weights, self.unused_token_ids)
            for row_ids, row_weights in zip(ids, kept, strict=True):
                real = row_ids != -1
                sparse.append(dict(zip(row_ids[real].tolist(), row_weights[real].tolist(), strict=True)))
            feeds = {"last_hidden_state": hidden, "attention_mask": batch.attention_mask}
            vectors = self.colbert_head.run([feeds])[0]["colbert_vecs"]
            padded, lengths = colbert_rows(vectors, batch.attention_mask)
            colbert.extend(row[:n] for row, n in zip(padded, lengths.tolist(), strict=True))
        return M3Vectors(np.concatenate(dense, axis=0).astype(np.float32), sparse, colbert)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    return (a * b).sum(axis=1)


def compare(
    reference: np.ndarray, candidate: np.ndarray, precision: str, int8_scope: str = "", *, optimized: bool = False
) -> ParityReport:
    cos = cosine_rows(reference, candidate)
    threshold = PARITY_THRESHOLDS[precision]
    return ParityReport(
        precision=precision,
        threshold=threshold,
        texts=len(cos),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        max_abs_diff=float(np.abs(reference - candidate).max()),
        passed=bool(cos.min() >= threshold),
        int8_scope=int8_scope,
        optimized=optimized,
    )


def colbert_score(query: np.ndarray, passage: np.ndarray) -> float:
    """FlagEmbedding's `colbert_score`: per query vector its best passage vector, averaged over the query."""
    if len(query) == 0 or len(passage) == 0:
        return 0.0
    return float((query.astype(np.float64) @ passage.astype(np.float64).T).max(axis=1).sum() / len(query))


def compare_m3(reference: M3Vectors, candidate: M3Vectors, precision: str) -> M3Parity:
    """The sparse and ColBERT outputs of the exported pipeline against the PyTorch reference."""
    threshold = M3_THRESHOLDS[precision]
    sparse_diff, mismatches, kept = 0.0, 0, 0
    for ref, cand in zip(reference.sparse, candidate.sparse, strict=True):
        kept += len(ref)
        mismatches += len(set(ref) ^ set(cand))
        for token in set(ref) | set(cand):
            sparse_diff = max(sparse_diff, abs(ref.get(token, 0.0) - cand.get(token, 0.0)))
    lengths_differ = sum(len(a) != len(b) for a, b in zip(reference.colbert, candidate.colbert, strict=True))
    vector_diff, score_diff = 0.0, 0.0
    n = len(reference.colbert)
    for i in range(n):
        ref_i, cand_i = reference.colbert[i], candidate.colbert[i]
        if ref_i.shape == cand_i.shape and ref_i.size:
            vector_diff = max(vector_diff, float(np.abs(ref_i - cand_i).max()))
        for j in {i, (i + 1) % n}:
            ref_score = colbert_score(ref_i, reference.colbert[j])
            score_diff = max(score_diff, abs(ref_score - colbert_score(cand_i, candidate.colbert[j])))
    return M3Parity(
        threshold=threshold,
        sparse_max_abs_diff=sparse_diff,
        sparse_id_mismatches=mismatches,
        sparse_ids=kept,
        colbert_length_mismatches=lengths_differ,
        colbert_max_abs_diff=vector_diff,
        colbert_score_max_diff=score_diff,
        passed=bool(sparse_diff <= threshold and score_diff <= threshold and lengths_differ == 0),
    )
