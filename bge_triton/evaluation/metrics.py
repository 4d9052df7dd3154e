"""Quality metrics as pure numpy/scipy functions: STS Spearman, top-k search, MRR@k and Recall@k.

Ranks are 1-based; a rank of 0 means "no relevant item in the searched top k". Recall@k is the
share of queries with at least one relevant item in their top k (hit rate), as is usual for sets
with one positive per query.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np
from scipy.stats import spearmanr


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 length (all-zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (float64 [n])."""
    a, b = unit_rows(a), unit_rows(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))


def spearman(predicted: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation in [-1, 1] (scipy's, ties get average ranks); NaN for constant input."""
    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(gold, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-D sequences of the same length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError("spearman needs at least 2 pairs")
    return float(spearmanr(x, y).statistic)


def top_k(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    chunk_size: int = 256,
    exclude: Sequence[Collection[int]] | None = None,
) -> np.ndarray:
    """Indices [n_queries, min(k, n_corpus)] of each query's most similar corpus rows, best first.

    Similarity is the dot product of unit rows (cosine). Queries go through in chunks of
    `chunk_size`, so at most chunk_size x n_corpus scores are held at once. Equal scores are
    ordered by corpus index. `exclude[i]`: corpus rows never ranked for query i (they sink to the end).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    q = unit_rows(queries)
    c = unit_rows(corpus)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"need [n, d] queries and [m, d] corpus, got {q.shape} and {c.shape}")
    n, m = q.shape[0], c.shape[0]
    k = min(k, m)
    out = np.empty((n, k), dtype=np.int64)
    if m == 0:
        return out
    ct = np.ascontiguousarray(c.T)
    for start in range(0, n, chunk_size):
        scores = q[start : start + chunk_size] @ ct  # [chunk, m]
        if exclude is not None:
            for row, skipped in enumerate(exclude[start : start + len(scores)]):
                if skipped:
                    scores[row, list(skipped)] = -np.inf
        if k < m:
            candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            candidates = np.broadcast_to(np.arange(m), scores.shape)
        picked = np.take_along_axis(scores, candidates, axis=1)
        # best score first, then the lower corpus index
        order = np.lexsort((candidates, -picked), axis=1)
        out[start : start + len(scores)] = np.take_along_axis(candidates, order, axis=1)
    return out


def first_hit_ranks(rankings: Sequence[Sequence[int]] | np.ndarray, relevant: Sequence[Collection[int]]) -> np.ndarray:
    """1-based rank of each query's first relevant item in its ranking; 0 when none is there."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} relevance sets")
    ranks = np.zeros(len(rankings), dtype=np.int64)
    for i, (ranking, wanted) in enumerate(zip(rankings, relevant, strict=True)):
        for position, item in enumerate(ranking, start=1):
            if int(item) in wanted:
                ranks[i] = position
                break
    return ranks


def _hits(ranks: Iterable[int] | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(hit within k, ranks) as arrays."""
    if k < 1:
        raise ValueError("k must be at least 1")
    r = np.asarray(ranks if isinstance(ranks, np.ndarray) else list(ranks), dtype=np.int64)
    if r.size == 0:
        raise ValueError("no queries")
    return (r >= 1) & (r <= k), r


def mrr_at_k(ranks: Iterable[int] | np.ndarray, k: int) -> float:
    """Mean reciprocal rank of the first relevant item, counting 0 for ranks past k (or 0 = not found)."""
    hit, r = _hits(ranks, k)
    return float(np.where(hit, 1.0 / np.maximum(r, 1), 0.0).mean())


def recall_at_k(ranks: Iterable[int] | np.ndarray, k: int) -> float:
    """Share of queries with a relevant item within the top k."""
    hit, _ = _hits(ranks, k)
    return float(hit.mean())


def retrieval_metrics(
    queries: np.ndarray,
    corpus: np.ndarray,
    relevant: Sequence[Collection[int]],
    *,
    mrr_k: int = 10,
    recall_ks: Sequence[int] = (1, 10),
    chunk_size: int = 256,
    exclude: Sequence[Collection[int]] | None = None,
) -> dict[str, float]:
    """{"mrr@10": .., "recall@1": .., "recall@10": ..} of the queries searched in the corpus by cosine,
    each query's `exclude` rows left out of its ranking."""
    depth = max(mrr_k, *recall_ks)
    ranks = first_hit_ranks(top_k(queries, corpus, depth, chunk_size=chunk_size, exclude=exclude), relevant)
    out = {f"mrr@{mrr_k}": mrr_at_k(ranks, mrr_k)}
    for k in recall_ks:
        out[f"recall@{k}"] = recall_at_k(ranks, k)
    return out
