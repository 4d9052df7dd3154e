"""Texts longer than the model's window, cut into windows: where to cut, and how chunk vectors become one.

`plan_chunks` works on a text's tokens (their character offsets) and a budget of tokens per chunk. It cuts
where the text itself pauses, preferring, among the cuts that leave a chunk at least half full,
1. a paragraph break (white space holding a newline between two tokens; the last such cut that fits),
2. the end of a sentence (a token ending in one of `SENTENCE_ENDS`, Chinese or ASCII, or in `.` followed by
   white space; closing quotes and brackets after it included),
and where the budget holds neither, it cuts the token window at the budget and starts the next chunk `overlap`
tokens earlier, so no sentence is seen only in halves.

`pool` is the document vector: the mean of the (unit) chunk vectors weighted by their text tokens, re-normalised.
Pure functions (numpy only): the proxy and the tests' in-process reference run the same plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PARAGRAPH, SENTENCE, NONE = 2, 1, 0
SENTENCE_ENDS = frozenset("。！？；!?;…")
CLOSERS = frozenset("”’\"'）)」』】》]")
MIN_FILL = 0.5  # a boundary cut must leave a chunk at least this full (else the window is cut mid-sentence)
OVERLAP_FRACTION = 8  # a mid-sentence cut repeats window // OVERLAP_FRACTION tokens in the next chunk


@dataclass(frozen=True)
class Chunk:
    """Tokens [first, stop) of a text: characters [start, end) of it."""

    first: int
    stop: int
    start: int
    end: int

    @property
    def tokens(self) -> int:
        return self.stop - self.first


def default_overlap(budget: int) -> int:
    return max(0, min(budget // OVERLAP_FRACTION, budget - 1))


def boundary_levels(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """levels[i]: how good a cut between token i and token i + 1 is (PARAGRAPH, SENTENCE or NONE)."""
    levels = []
    for i in range(len(offsets) - 1):
        stop, following = offsets[i][1], offsets[i + 1][0]
        gap = text[stop:following]
        if "\n" in gap:
            levels.append(PARAGRAPH)
            continue
        before = text[offsets[i][0] : stop].rstrip()
        k = len(before)
        while k > 0 and before[k - 1] in CLOSERS:
            k -= 1
        last = before[k - 1] if k else ""
        if last in SENTENCE_ENDS or (last == "." and (gap[:1].isspace() or following >= len(text))):
            levels.append(SENTENCE)
        else:
            levels.append(NONE)
    return levels


def plan_chunks(text: str, offsets: Sequence[tuple[int, int]], budget: int, overlap: int | None = None) -> list[Chunk]:
    """Chunks of at most `budget` tokens covering every token of `text` (`offsets`: each token's [start, end)
    characters, special tokens excluded). One chunk when the text fits."""
    if budget < 1:
        raise ValueError("the budget must be at least one token")
    n = len(offsets)
    if n == 0:
        return [Chunk(0, 0, 0, len(text))]
    overlap = default_overlap(budget) if overlap is None else max(0, min(overlap, budget - 1))
    levels = boundary_levels(text, offsets)
    spans: list[tuple[int, int]] = []
    first = 0
    while first < n:
        if n - first <= budget:
            spans.append((first, n))
            break
        limit = first + budget  # tokens [first, limit) fit
        lowest = first + max(1, int(budget * MIN_FILL))
        best, best_level = limit, NONE
        for cut in range(limit, lowest - 1, -1):  # a cut before token `cut`: levels[cut - 1]
            level = levels[cut - 1]
            if level > best_level:
                best, best_level = cut, level
                if level == PARAGRAPH:
                    break
        spans.append((first, best))
        first = best if best_level > NONE else best - overlap
    return [Chunk(a, b, offsets[a][0], offsets[b - 1][1]) for a, b in spans]


def pool(vectors: np.ndarray, weights: Sequence[int]) -> np.ndarray:
    """The weighted mean of the rows of `vectors`, re-normalised to unit length (float32 [dim])."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 1)
    mean = (np.asarray(vectors, dtype=np.float64) * w).sum(axis=0) / max(float(w.sum()), 1e-12)
    norm = float(np.linalg.norm(mean))
    return (mean / max(norm, 1e-12)).astype(np.float32)
