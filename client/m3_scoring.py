"""bge-m3's three outputs and its relevance scores, as FlagEmbedding's `BGEM3FlagModel` computes them.

- dense: the dot product of the normalised CLS vectors;
- sparse ("lexical matching"): the sum over token ids present in both texts of query weight x passage weight;
- ColBERT: for each query vector the best dot product with any passage vector, summed and divided by the number
  of query vectors;
- hybrid: the weighted mean `(w_dense*dense + w_sparse*sparse + w_colbert*colbert) / (w_dense + w_sparse +
  w_colbert)` (FlagEmbedding's `colbert+sparse+dense`), and `sparse+dense` likewise over two modes.
FlagEmbedding's `compute_score` weighs the modes equally by default; the bge-m3 model card suggests
[0.4, 0.2, 0.4] for dense, sparse, ColBERT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bge_triton.model_names import m3_model_names, model_names

Mode = str  # "dense" | "sparse" | "colbert"
MODES: tuple[Mode, ...] = ("dense", "sparse", "colbert")

# Triton outputs of the M3 ensembles, per mode.
MODE_OUTPUTS: dict[Mode, tuple[str, ...]] = {
    "dense": ("EMBEDDING",),
    "sparse": ("SPARSE_IDS", "SPARSE_WEIGHTS"),
    "colbert": ("COLBERT", "COLBERT_LENGTH"),
}


def m3_ensemble(name: str, modes: Sequence[Mode]) -> str:
    """The ensemble computing `modes` with one encoder pass: `NAME` (dense), `NAME-sparse`, `NAME-colbert`,
    or `NAME-m3` (two or three modes)."""
    wanted = set(modes)
    unknown = wanted - set(MODES)
    if unknown or not wanted:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {sorted(modes)}")
    if wanted == {"dense"}:
        return model_names(name)["ensemble"]
    kind = next(iter(wanted)) if len(wanted) == 1 else "m3"
    return m3_model_names(name)[f"{kind}_ensemble"]


@dataclass(frozen=True)
class M3Weights:
    """Weights of the hybrid score (FlagEmbedding's `weights_for_different_modes`, equal by default)."""

    dense: float = 1.0
    sparse: float = 1.0
    colbert: float = 1.0

    def __post_init__(self) -> None:
        values = (self.dense, self.sparse, self.colbert)
        if any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")


@dataclass
class M3Vectors:
    """What the M3 ensembles return for n texts, in input order; a mode not asked for is None."""

    dense: np.ndarray | None  # float32 [n, dim], unit rows
    sparse: list[dict[int, float]] | None  # per text {token id: weight}, special tokens removed
    colbert: list[np.ndarray] | None  # per text float32 [tokens - 1, dim], unit rows
    token_counts: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.token_counts)


@dataclass(frozen=True)
class PassageScores:
    index: int
    dense: float
    sparse: float
    colbert: float
    sparse_dense: float
    hybrid: float


def lexical_matching_score(query: dict[int, float], passage: dict[int, float]) -> float:
    """Sum of weight products over the token ids both texts hold."""
    if len(passage) < len(query):
        query, passage = passage, query
    return float(sum(weight * passage[token] for token, weight in query.items() if token in passage))


def colbert_score(query: np.ndarray, passage: np.ndarray) -> float:
    """Mean over query vectors of the best dot product with a passage vector (0 when either is empty)."""
    if len(query) == 0 or len(passage) == 0:
        return 0.0
    q = np.asarray(query, dtype=np.float32)
    p = np.asarray(passage, dtype=np.float32)
    return float((q @ p.T).max(axis=1).sum() / len(q))


def score_passages(query: M3Vectors, passages: M3Vectors, weights: M3Weights | None = None) -> list[PassageScores]:
    """Every passage against the one query (both with all three modes)."""
    weights = weights or M3Weights()
    if query.dense is None or query.sparse is None or query.colbert is None:
        raise ValueError("the query needs dense, sparse and ColBERT vectors")
    if passages.dense is None or passages.sparse is None or passages.colbert is None:
        raise ValueError("the passages need dense, sparse and ColBERT vectors")
    dense = passages.dense @ query.dense[0]
    out = []
    for i in range(len(passages)):
        d = float(dense[i])
        s = lexical_matching_score(query.sparse[0], passages.sparse[i])
        c = colbert_score(query.colbert[0], passages.colbert[i])
        two = weights.dense + weights.sparse
        sparse_dense = (weights.dense * d + weights.sparse * s) / two if two > 0 else 0.0
        total = weights.dense + weights.sparse + weights.colbert
        hybrid = (weights.dense * d + weights.sparse * s + weights.colbert * c) / total
        out.append(PassageScores(i, d, s, c, sparse_dense, hybrid))
    return out


def sparse_rows(ids: np.ndarray, weights: np.ndarray) -> list[dict[int, float]]:
    """SPARSE_IDS / SPARSE_WEIGHTS rows (right-padded with id -1) as {token id: weight} dicts."""
    rows = []
    for row_ids, row_weights in zip(np.asarray(ids), np.asarray(weights), strict=True):
        kept = row_ids >= 0
        rows.append({int(t): float(w) for t, w in zip(row_ids[kept], row_weights[kept], strict=True)})
    return rows


def colbert_rows(vectors: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """COLBERT [k, longest, dim] rows cut to COLBERT_LENGTH."""
    v = np.asarray(vectors, dtype=np.float32)
    return [v[i, : int(n)].copy() for i, n in enumerate(np.asarray(lengths).reshape(-1))]
