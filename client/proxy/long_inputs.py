"""Texts over the model's window, kept whole or by their end: `truncation` "start" and "chunk".

The Triton tokenizer model cuts every text to its first `max_tokens` tokens ("end"). Keeping the end, or every
window, needs the tokens themselves: the text (with the model's query/passage instruction in front, as the
ensemble gets it) goes through `NAME-tokenize` untruncated and without special tokens, and the rows the encoder
must see go to the `NAME-ids` ensemble as token ids, wrapped in the model's own special tokens (learned once
per model from the tokenizer). Texts that fit the window take the ordinary text path, so for them every mode
gives the very same vector.

- "start": the instruction's tokens, then the last tokens of the text that fit (NVIDIA NIM's `truncate: START`,
  TEI's `truncation_direction: Left`); the instruction is kept, not cut.
- "chunk": the text's tokens cut into windows by `chunking.plan_chunks` (paragraph, then sentence boundaries;
  token windows with overlap where neither fits), each window with the instruction in front, all of a request's
  windows embedded together; the text's vector is `chunking.pool` of its windows' vectors weighted by their
  text tokens. Usage counts every token the encoder saw.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..triton_client import EmbeddingResult, TokenizedText
from .chunking import Chunk, plan_chunks, pool
from .errors import ProxyError
from .fair_share import FairGate, embed_in_slices
from .replicas import ReplicaSet

Truncation = Literal["end", "start", "none", "chunk"]
TRUNCATIONS: tuple[Truncation, ...] = ("end", "start", "none", "chunk")

EmbedTexts = Callable[[list[str]], Awaitable[EmbeddingResult]]
EmbedIds = Callable[[list[list[int]]], Awaitable[EmbeddingResult]]
Tokenize = Callable[[list[str], bool], Awaitable[list[TokenizedText]]]  # (texts, add_special_tokens)


@dataclass(frozen=True)
class TextChunks:
    """One input's chunks: their vectors (unit, full dimension), character spans into the input, text tokens."""

    vectors: np.ndarray  # float32 [k, dim]
    spans: list[tuple[int, int]]
    tokens: list[int]


@dataclass(frozen=True)
class LongResult:
    result: EmbeddingResult  # per input: its vector, tokens embedded (usage), tokens of the whole input
    chunks: list[TextChunks] | None  # "chunk" only


@dataclass(frozen=True)
class _Split:
    """One text's tokens: the instruction's, then the text's (offsets into the input, not the prefixed text)."""

    instruction: list[int]
    body: list[int]
    offsets: list[tuple[int, int]]


async def special_tokens(tokenize: Tokenize) -> tuple[list[int], list[int]]:
    """The ids the model's tokenizer puts before and after a text ([CLS] / [SEP], <s> / </s>)."""
    full, plain = await asyncio.gather(tokenize(["x"], True), tokenize(["x"], False))
    ids, inner = full[0].ids.tolist(), plain[0].ids.tolist()
    for start in range(len(ids) - len(inner) + 1):
        if ids[start : start + len(inner)] == inner:
            return ids[:start], ids[start + len(inner) :]
    return [], []


def split_tokens(tokenized: TokenizedText, text: str) -> _Split:
    """Separate the instruction's tokens (the leading ones that start inside it) from the text's."""
    skip = len(tokenized.text) - len(text)  # the instruction's characters
    ids = tokenized.ids.tolist()
    offsets = tokenized.offsets.tolist()
    special = tokenized.special.tolist()
    count = 0
    while count < len(ids) and not special[count] and offsets[count][0] < skip:
        count += 1
    spans: list[tuple[int, int]] = []
    previous = 0
    for (start, stop), is_special in zip(offsets[count:], special[count:], strict=True):
        # a special token written in the text ("[SEP]") has no offsets: it sits where the previous token ended
        span = (previous, previous) if is_special else (max(0, start - skip), max(0, stop - skip))
        spans.append(span)
        previous = span[1]
    return _Split(ids[:count], ids[count:], spans)


async def embed_long(
    texts: list[str],
    *,
    truncation: Truncation,
    max_tokens: int,
    max_chunks: int,
    specials: tuple[list[int], list[int]],
    tokenize: Tokenize,
    embed_texts: EmbedTexts,
    embed_ids: EmbedIds,
) -> LongResult:
    """`texts` embedded keeping their end ("start") or every window ("chunk")."""
    pre, suf = specials
    tokenized = await tokenize(texts, False)
    splits = [split_tokens(t, text) for t, text in zip(tokenized, texts, strict=True)]
    frame = len(pre) + len(suf)
    full_counts = [frame + len(s.instruction) + len(s.body) for s in splits]
    fitting = [i for i, n in enumerate(full_counts) if n <= max_tokens]
    long = [i for i, n in enumerate(full_counts) if n > max_tokens]
    plans: dict[int, list[Chunk]] = {}
    rows: list[list[int]] = []
    owners: list[int] = []  # rows -> input index
    for i in long:
        split = splits[i]
        budget = max_tokens - frame - len(split.instruction)
        if budget < 1:
            raise ProxyError(400, f"input {i}: the model's instruction leaves no room for text in its "
                             f"{max_tokens}-token window", param="input", code="instruction_too_long")  # fmt: skip
        if truncation == "start":
            first = len(split.body) - budget
            plans[i] = [Chunk(first, len(split.body), split.offsets[first][0], split.offsets[-1][1])]
        else:
            plans[i] = plan_chunks(texts[i], split.offsets, budget)
            if len(plans[i]) > max_chunks:
                raise ProxyError(
                    400, f"input {i} needs {len(plans[i])} chunks of the model's {max_tokens}-token window; at most "
                    f"{max_chunks} per input (--max-chunks): split the document", param="input",
                    code="too_many_chunks",
                )  # fmt: skip
        for chunk in plans[i]:
            kept = split.body[chunk.first : chunk.stop]
            rows.append(pre + split.instruction + kept + suf)
            owners.append(i)
    short, windows = await asyncio.gather(
        embed_texts([texts[i] for i in fitting]) if fitting else _nothing(),
        embed_ids(rows) if rows else _nothing(),
    )
    return _assemble(texts, truncation, fitting, short, long, plans, windows, owners, full_counts, splits)


async def _nothing() -> None:
    return None


def _assemble(
    texts: list[str],
    truncation: Truncation,
    fitting: Sequence[int],
    short: EmbeddingResult | None,
    long: Sequence[int],
    plans: dict[int, list[Chunk]],
    windows: EmbeddingResult | None,
    owners: Sequence[int],
    full_counts: Sequence[int],
    splits: Sequence[_Split],
) -> LongResult:
    parts = [r for r in (short, windows) if r is not None]
    dim = parts[0].vectors.shape[1]
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    used = np.zeros(len(texts), dtype=np.int64)
    chunks: list[TextChunks | None] = [None] * len(texts)
    if short is not None:
        for position, i in enumerate(fitting):
            vectors[i] = short.vectors[position]
            used[i] = short.token_counts[position]
            chunks[i] = TextChunks(short.vectors[position : position + 1], [(0, len(texts[i]))], [len(splits[i].body)])
    if windows is not None:
        rows_of: dict[int, list[int]] = {}
        for row, i in enumerate(owners):
            rows_of.setdefault(i, []).append(row)
        for i in long:
            mine = rows_of[i]
            weights = [chunk.tokens for chunk in plans[i]]
            rows = windows.vectors[mine]
            vectors[i] = rows[0] if truncation == "start" else pool(rows, weights)
            used[i] = int(windows.token_counts[mine].sum())
            chunks[i] = TextChunks(rows, [(c.start, c.end) for c in plans[i]], weights)
    result = EmbeddingResult(vectors, used, np.asarray(full_counts, dtype=np.int64))
    return LongResult(result, [c for c in chunks if c is not None] if truncation == "chunk" else None)


_SPECIALS: weakref.WeakKeyDictionary[ReplicaSet, tuple[list[int], list[int]]] = weakref.WeakKeyDictionary()


async def embed_beyond_window(
    replicas: ReplicaSet,
    gate: FairGate,
    texts: list[str],
    *,
    query: bool,
    truncation: Truncation,
    max_chunks: int,
    slice_tokens: int,
    embed_texts: EmbedTexts,
) -> LongResult:
    """`embed_long` through a model's replicas: tokens from `NAME-tokenize`, windows through `NAME-ids` in fair
    slices (`gate`); texts that fit through `embed_texts` (the service's ordinary path, vector cache included)."""

    async def tokenize(part: list[str], add_special_tokens: bool) -> list[TokenizedText]:
        return await replicas.tokenize(part, query=query, add_special_tokens=add_special_tokens)

    async def embed_ids(rows: list[list[int]]) -> EmbeddingResult:
        return await embed_in_slices(
            replicas, gate, rows, ids=True, query=False, truncate=True, slice_tokens=slice_tokens
        )

    specials = _SPECIALS.get(replicas)
    if specials is None:
        specials = _SPECIALS[replicas] = await special_tokens(tokenize)
    return await embed_long(
        texts, truncation=truncation, max_tokens=replicas.facts.max_tokens, max_chunks=max_chunks,
        specials=specials, tokenize=tokenize, embed_texts=embed_texts, embed_ids=embed_ids,
    )  # fmt: skip


def truncation_of(value: bool | str) -> Truncation:
    """The body's `truncate`: true / false (OpenAI-compatible servers), or NVIDIA NIM's END / START / NONE, or CHUNK."""
    if isinstance(value, bool):
        return "end" if value else "none"
    mode = value.lower()
    if mode not in TRUNCATIONS:
        raise ProxyError(400, f"truncate must be true, false, NONE, START, END or CHUNK, not {value!r}",
                         param="truncate", code="invalid_value")  # fmt: skip
    return mode  # type: ignore[return-value]
