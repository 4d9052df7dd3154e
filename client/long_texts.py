"""Texts over the model's window, kept by their end ("start") or whole ("chunk"): the plan, and the result.

The Triton tokenizer model cuts every text to its first `max_tokens` tokens ("end"). Keeping the end, or every
window, needs the tokens themselves: the text (with the model's query/passage instruction in front, as the
ensemble gets it) goes through `NAME-tokenize` untruncated and without special tokens, and the rows the encoder
must see go to the `NAME-ids` ensemble as token ids, wrapped in the model's own special tokens (learned from the
tokenizer: `special_ids`). Texts that fit the window take the ordinary text path, so for them every mode gives
the very same vector.

- "start": the instruction's tokens, then the last tokens of the text that fit (NVIDIA NIM's `truncate: START`,
  TEI's `truncation_direction: Left`); the instruction is kept, not cut.
- "chunk": the text's tokens cut into windows by `chunking.plan_chunks` (paragraph, then sentence boundaries;
  token windows with overlap where neither fits), each window with the instruction in front, all windows of a
  call embedded together; the text's vector is `chunking.pool` of its windows' vectors weighted by their text
  tokens. The token count (usage) is every token the encoder saw.

`plan_long` and `assemble` are pure; `embed_long` / `embed_long_async` run them with the client library, and the
proxy (proxy/long_inputs.py) with its replicas and fair slices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .chunking import Chunk, plan_chunks, pool
from .errors import InvalidInput
from .triton_client import EmbeddingResult, TokenizedText, as_text_list

if TYPE_CHECKING:
    from .triton_client import AsyncEmbeddingClient, EmbeddingClient

Truncation = Literal["end", "start", "none", "chunk"]
TRUNCATIONS: tuple[Truncation, ...] = ("end", "start", "none", "chunk")
MAX_CHUNKS = 64


class TooManyChunks(ValueError):
    """A text needs more windows than allowed."""


class NoRoomForText(ValueError):
    """The model's instruction and special tokens fill its window."""


@dataclass(frozen=True)
class TextChunks:
    """One input's windows: their vectors (unit, full dimension), character spans into the input, text tokens."""

    vectors: np.ndarray  # float32 [k, dim]
    spans: list[tuple[int, int]]
    tokens: list[int]


@dataclass(frozen=True)
class LongResult:
    result: EmbeddingResult  # per input: its vector, tokens embedded (usage), tokens of the whole input
    chunks: list[TextChunks] | None  # "chunk" only: per input its windows


@dataclass(frozen=True)
class Split:
    """One text's tokens: the instruction's, then the text's (offsets into the input, not the prefixed text)."""

    instruction: list[int]
    body: list[int]
    offsets: list[tuple[int, int]]


@dataclass(frozen=True)
class LongPlan:
    """What to send: the texts that fit (ordinary path) and the id rows of the others' windows."""

    truncation: Truncation
    texts: list[str]
    splits: list[Split]
    full_counts: list[int]
    fitting: list[int]  # input indices embedded as text
    long: list[int]  # input indices embedded as windows
    windows: dict[int, list[Chunk]]
    rows: list[list[int]]  # token ids with special tokens, one per window
    owners: list[int]  # rows -> input index


def special_ids(with_specials: Sequence[int], without: Sequence[int]) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text, from one text tokenized with and without them."""
    full, inner = list(with_specials), list(without)
    for start in range(len(full) - len(inner) + 1):
        if full[start : start + len(inner)] == inner:
            return full[:start], full[start + len(inner) :]
    return [], []


def split_tokens(tokenized: TokenizedText, text: str) -> Split:
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
    return Split(ids[:count], ids[count:], spans)


def plan_long(
    texts: list[str],
    tokenized: Sequence[TokenizedText],
    *,
    truncation: Truncation,
    specials: tuple[list[int], list[int]],
    max_tokens: int,
    max_chunks: int = MAX_CHUNKS,
) -> LongPlan:
    """The plan for `texts` (tokenized without special tokens, instruction in front); TooManyChunks or
    NoRoomForText for the first text that cannot be embedded so."""
    if truncation not in ("start", "chunk"):
        raise ValueError(f"plan_long is for truncation start or chunk, not {truncation!r}")
    pre, suf = specials
    splits = [split_tokens(t, text) for t, text in zip(tokenized, texts, strict=True)]
    frame = len(pre) + len(suf)
    full_counts = [frame + len(s.instruction) + len(s.body) for s in splits]
    fitting = [i for i, n in enumerate(full_counts) if n <= max_tokens]
    long = [i for i, n in enumerate(full_counts) if n > max_tokens]
    windows: dict[int, list[Chunk]] = {}
    rows: list[list[int]] = []
    owners: list[int] = []
    for i in long:
        split = splits[i]
        budget = max_tokens - frame - len(split.instruction)
        if budget < 1:
            raise NoRoomForText(
                f"input {i}: the model's instruction leaves no room for text in its {max_tokens}-token window"
            )
        if truncation == "start":
            first = len(split.body) - budget
            windows[i] = [Chunk(first, len(split.body), split.offsets[first][0], split.offsets[-1][1])]
        else:
            windows[i] = plan_chunks(texts[i], split.offsets, budget)
            if len(windows[i]) > max_chunks:
                raise TooManyChunks(
                    f"input {i} needs {len(windows[i])} chunks of the model's {max_tokens}-token window; at most "
                    f"{max_chunks} per input: split the document"
                )
        for chunk in windows[i]:
            rows.append(pre + split.instruction + split.body[chunk.first : chunk.stop] + suf)
            owners.append(i)
    return LongPlan(truncation, texts, splits, full_counts, fitting, long, windows, rows, owners)


def assemble(plan: LongPlan, short: EmbeddingResult | None, windows: EmbeddingResult | None) -> LongResult:
    """One vector per input from the fitting texts' result (`short`) and the windows' (`windows`)."""
    texts = plan.texts
    parts = [r for r in (short, windows) if r is not None]
    dim = parts[0].vectors.shape[1] if parts else 0
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    used = np.zeros(len(texts), dtype=np.int64)
    chunks: list[TextChunks | None] = [None] * len(texts)
    if short is not None:
        for position, i in enumerate(plan.fitting):
            vectors[i] = short.vectors[position]
            used[i] = short.token_counts[position]
            one = short.vectors[position : position + 1]
            chunks[i] = TextChunks(one, [(0, len(texts[i]))], [len(plan.splits[i].body)])
    if windows is not None:
        rows_of: dict[int, list[int]] = {}
        for row, i in enumerate(plan.owners):
            rows_of.setdefault(i, []).append(row)
        for i in plan.long:
            mine = rows_of[i]
            weights = [chunk.tokens for chunk in plan.windows[i]]
            rows = windows.vectors[mine]
            vectors[i] = rows[0] if plan.truncation == "start" else pool(rows, weights)
            used[i] = int(windows.token_counts[mine].sum())
            chunks[i] = TextChunks(rows, [(c.start, c.end) for c in plan.windows[i]], weights)
    result = EmbeddingResult(vectors, used, np.asarray(plan.full_counts, dtype=np.int64))
    return LongResult(result, [c for c in chunks if c is not None] if plan.truncation == "chunk" else None)


# -- the client library -------------------------------------------------------------------------------------------
def embed_long(
    client: EmbeddingClient,
    texts: str | Sequence[str],
    *,
    truncation: Truncation = "chunk",
    query: bool = False,
    max_chunks: int = MAX_CHUNKS,
) -> LongResult:
    """`texts` embedded through Triton keeping their end ("start") or every window ("chunk"); "end" and "none"
    are `client.embed_with_usage(truncate=True / False)`. InvalidInput for a text over `max_chunks` windows."""
    items = as_text_list(texts)
    if truncation in ("end", "none"):
        return LongResult(client.embed_with_usage(items, query=query, truncate=truncation == "end"), None)
    full, plain = client.tokenize(["x"]), client.tokenize(["x"], add_special_tokens=False)
    specials = special_ids(full[0].ids.tolist(), plain[0].ids.tolist())
    tokenized = client.tokenize(items, query=query, add_special_tokens=False)
    plan = _plan(items, tokenized, truncation, specials, client.facts.max_tokens, max_chunks)
    short = client.embed_with_usage([items[i] for i in plan.fitting], query=query) if plan.fitting else None
    windows = client.embed_token_ids(plan.rows) if plan.rows else None
    return assemble(plan, short, windows)


async def embed_long_async(
    client: AsyncEmbeddingClient,
    texts: str | Sequence[str],
    *,
    truncation: Truncation = "chunk",
    query: bool = False,
    max_chunks: int = MAX_CHUNKS,
) -> LongResult:
    """`embed_long` for the asyncio client."""
    items = as_text_list(texts)
    if truncation in ("end", "none"):
        return LongResult(await client.embed_with_usage(items, query=query, truncate=truncation == "end"), None)
    full, plain, tokenized = await asyncio.gather(
        client.tokenize(["x"]),
        client.tokenize(["x"], add_special_tokens=False),
        client.tokenize(items, query=query, add_special_tokens=False),
    )
    specials = special_ids(full[0].ids.tolist(), plain[0].ids.tolist())
    plan = _plan(items, tokenized, truncation, specials, client.facts.max_tokens, max_chunks)
    short, windows = await asyncio.gather(
        client.embed_with_usage([items[i] for i in plan.fitting], query=query) if plan.fitting else _none(),
        client.embed_token_ids(plan.rows) if plan.rows else _none(),
    )
    return assemble(plan, short, windows)


async def _none() -> None:
    return None


def _plan(
    items: list[str],
    tokenized: Sequence[TokenizedText],
    truncation: Truncation,
    specials: tuple[list[int], list[int]],
    max_tokens: int,
    max_chunks: int,
) -> LongPlan:
    if truncation not in TRUNCATIONS:
        raise InvalidInput(f"truncation must be one of {', '.join(TRUNCATIONS)}, not {truncation!r}")
    try:
        return plan_long(
            items, tokenized, truncation=truncation, specials=specials, max_tokens=max_tokens, max_chunks=max_chunks
        )
    except (TooManyChunks, NoRoomForText) as exc:
        raise InvalidInput(str(exc)) from None
