"""Texts over the model's window, kept by their end ("start") or whole ("chunk"): the plan, and the result.

The Triton tokenizer model cuts every text to its first `max_tokens` tokens ("end"). To keep the end, or every
window, the text (with the model's query/passage instruction in front, as the ensemble gets it) first goes
through `NAME-tokenize` untruncated, which gives each token's character offsets; the plan then picks, by those
offsets, the pieces of the text to embed, and each piece goes through the ordinary text path (the instruction put
in front again), so what the encoder sees is always a piece of the text as written, tokenized as the model
tokenizes it. Texts that fit the window are embedded as they are: for them every mode gives the very same vector.

- "start": the longest end of the text that fits (NVIDIA NIM's `truncate: START`, TEI's `truncation_direction:
  Left`): the same vector as embedding that tail itself. The instruction is kept, not cut.
- "chunk": the text's tokens cut into windows by `chunking.plan_chunks` (paragraph, then sentence boundaries;
  token windows with overlap where neither fits), all windows of a call embedded together; the text's vector is
  `chunking.pool` of the windows' vectors weighted by their text tokens. The token count (usage) is every token
  the encoder saw.

A piece re-tokenized on its own may take a token more than inside the whole text (a word-start marker): the plan
leaves `MARGIN` tokens of the window free, and a piece that still comes back over the window (its full token
count says so) is planned again shorter, never cut by the tokenizer model at its end.

`plan_long` and `assemble` are pure; `embed_long` / `embed_long_async` run them with the client library, and the
proxy (proxy/long_inputs.py) with its replicas and fair slices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .chunking import Chunk, plan_chunks, pool
from .errors import InvalidInput, ServerError
from .triton_client import EmbeddingResult, TokenizedText, as_text_list

if TYPE_CHECKING:
    from .triton_client import AsyncEmbeddingClient, EmbeddingClient

Truncation = Literal["end", "start", "none", "chunk"]
TRUNCATIONS: tuple[Truncation, ...] = ("end", "start", "none", "chunk")
MAX_CHUNKS = 64
MARGIN = 2  # tokens of the window left free for a piece's re-tokenization
ATTEMPTS = 3  # plans before a piece that keeps coming back over the window is an error


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
    """One text's tokens after the instruction: their character offsets into the text (not the prefixed one)."""

    instruction: int  # tokens that start inside the instruction
    offsets: list[tuple[int, int]]


@dataclass(frozen=True)
class LongPlan:
    """The pieces to embed as text: the inputs that fit whole, and the windows of the others."""

    truncation: Truncation
    texts: list[str]
    full_counts: list[int]  # tokens of each whole input, special tokens and instruction included
    windows: list[list[Chunk]]  # per input: one whole-text chunk when it fits
    pieces: list[str]  # the texts to embed
    owners: list[int]  # pieces -> input index
    fits: list[bool]


def special_count(with_specials: Sequence[int], without: Sequence[int]) -> int:
    """How many special tokens the tokenizer adds around a text ([CLS] + [SEP]: 2)."""
    return max(0, len(with_specials) - len(without))


def split_tokens(tokenized: TokenizedText, text: str) -> Split:
    """The text's tokens apart from the instruction's (the leading tokens that end inside it; a token that holds
    the instruction's last characters and the text's first, as sentencepiece's "▁一" does, is the text's)."""
    skip = len(tokenized.text) - len(text)  # the instruction's characters
    offsets = tokenized.offsets.tolist()
    special = tokenized.special.tolist()
    count = 0
    while count < len(offsets) and not special[count] and offsets[count][0] < skip:
        count += 1
    spans: list[tuple[int, int]] = []
    previous = 0
    for (start, stop), is_special in zip(offsets[count:], special[count:], strict=True):
        # a special token written in the text ("[SEP]") has no offsets: it sits where the previous token ended
        span = (previous, previous) if is_special else (max(0, start - skip), max(0, stop - skip))
        spans.append(span)
        previous = span[1]
    if count and offsets[count - 1][1] > skip:  # the straddling token: the text's first characters are in it
        spans = [(0, offsets[count - 1][1] - skip), *spans]
        count -= 1
    return Split(count, spans)


def plan_long(
    texts: list[str],
    tokenized: Sequence[TokenizedText],
    *,
    truncation: Truncation,
    specials: int,
    max_tokens: int,
    max_chunks: int = MAX_CHUNKS,
    shorter: dict[int, int] | None = None,
) -> LongPlan:
    """The plan for `texts` (`tokenized`: each with the instruction in front, without special tokens; `specials`:
    how many the tokenizer adds); `shorter[i]`: tokens fewer per window of input i (a re-plan). TooManyChunks or
    NoRoomForText for the first text that cannot be embedded so."""
    if truncation not in ("start", "chunk"):
        raise ValueError(f"plan_long is for truncation start or chunk, not {truncation!r}")
    shorter = shorter or {}
    splits = [split_tokens(t, text) for t, text in zip(tokenized, texts, strict=True)]
    full_counts = [specials + s.instruction + len(s.offsets) for s in splits]
    windows: list[list[Chunk]] = []
    pieces: list[str] = []
    owners: list[int] = []
    fits: list[bool] = []
    for i, (text, split) in enumerate(zip(texts, splits, strict=True)):
        n = len(split.offsets)
        fits.append(full_counts[i] <= max_tokens)
        if fits[-1]:
            windows.append([Chunk(0, n, 0, len(text))])
            pieces.append(text)
            owners.append(i)
            continue
        budget = max_tokens - specials - split.instruction - MARGIN - shorter.get(i, 0)
        if budget < 1:
            raise NoRoomForText(f"input {i}: the instruction leaves no room for text in the {max_tokens}-token window")
        if truncation == "start":
            first = n - budget
            windows.append([Chunk(first, n, split.offsets[first][0], len(text))])
        else:
            windows.append(plan_chunks(text, split.offsets, budget))
            if len(windows[-1]) > max_chunks:
                raise TooManyChunks(
                    f"input {i} needs {len(windows[-1])} chunks of the model's {max_tokens}-token window; at most "
                    f"{max_chunks} per input: split the document"
                )
        for chunk in windows[-1]:
            pieces.append(text[chunk.start : chunk.end])
            owners.append(i)
    return LongPlan(truncation, texts, full_counts, windows, pieces, owners, fits)


def overflow(plan: LongPlan, result: EmbeddingResult, max_tokens: int) -> dict[int, int]:
    """input index -> tokens its longest piece came back over the window (pieces of long inputs only)."""
    over: dict[int, int] = {}
    for row, i in enumerate(plan.owners):
        excess = int(result.full_token_counts[row]) - max_tokens
        if excess > 0 and not plan.fits[i]:
            over[i] = max(over.get(i, 0), excess)
    return over


def assemble(plan: LongPlan, result: EmbeddingResult) -> LongResult:
    """One vector per input from the pieces' vectors (`result`, in `plan.pieces` order)."""
    texts = plan.texts
    vectors = np.zeros((len(texts), result.vectors.shape[1]), dtype=np.float32)
    used = np.zeros(len(texts), dtype=np.int64)
    rows_of: dict[int, list[int]] = {}
    for row, i in enumerate(plan.owners):
        rows_of.setdefault(i, []).append(row)
    chunks: list[TextChunks] = []
    for i in range(len(texts)):
        mine = rows_of[i]
        weights = [chunk.tokens for chunk in plan.windows[i]]
        rows = result.vectors[mine]
        vectors[i] = rows[0] if len(mine) == 1 else pool(rows, weights)
        used[i] = int(result.token_counts[mine].sum())
        chunks.append(TextChunks(rows, [(c.start, c.end) for c in plan.windows[i]], weights))
    summed = EmbeddingResult(vectors, used, np.asarray(plan.full_counts, dtype=np.int64))
    return LongResult(summed, chunks if plan.truncation == "chunk" else None)


EmbedPieces = Callable[[list[str]], Awaitable[EmbeddingResult]]


async def run_plan(
    texts: list[str],
    tokenized: Sequence[TokenizedText],
    embed: EmbedPieces,
    *,
    truncation: Truncation,
    specials: int,
    max_tokens: int,
    max_chunks: int,
) -> LongResult:
    """Plan, embed the pieces, re-plan the inputs whose pieces came back over the window (`ATTEMPTS` times)."""
    shorter: dict[int, int] = {}
    for _ in range(ATTEMPTS):
        plan = plan_long(
            texts, tokenized, truncation=truncation, specials=specials, max_tokens=max_tokens,
            max_chunks=max_chunks, shorter=shorter,
        )  # fmt: skip
        outcome = _outcome(plan, await embed(plan.pieces), max_tokens, shorter)
        if outcome is not None:
            return outcome
    raise ServerError(f"input {min(shorter)}: its pieces still come back over the {max_tokens}-token window")


def run_plan_sync(
    texts: list[str],
    tokenized: Sequence[TokenizedText],
    embed: Callable[[list[str]], EmbeddingResult],
    *,
    truncation: Truncation,
    specials: int,
    max_tokens: int,
    max_chunks: int,
) -> LongResult:
    """`run_plan` with a blocking `embed`."""
    shorter: dict[int, int] = {}
    for _ in range(ATTEMPTS):
        plan = plan_long(
            texts, tokenized, truncation=truncation, specials=specials, max_tokens=max_tokens,
            max_chunks=max_chunks, shorter=shorter,
        )  # fmt: skip
        outcome = _outcome(plan, embed(plan.pieces), max_tokens, shorter)
        if outcome is not None:
            return outcome
    raise ServerError(f"input {min(shorter)}: its pieces still come back over the {max_tokens}-token window")


def _outcome(plan: LongPlan, result: EmbeddingResult, max_tokens: int, shorter: dict[int, int]) -> LongResult | None:
    """The result, or None after adding to `shorter` what the inputs whose pieces were too long must lose."""
    over = overflow(plan, result, max_tokens)
    if not over:
        return assemble(plan, result)
    for i, excess in over.items():
        shorter[i] = shorter.get(i, 0) + excess
    return None


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
    _check(truncation)
    if truncation in ("end", "none"):
        return LongResult(client.embed_with_usage(items, query=query, truncate=truncation == "end"), None)
    specials = special_count(client.tokenize(["x"])[0].ids, client.tokenize(["x"], add_special_tokens=False)[0].ids)
    tokenized = client.tokenize(items, query=query, add_special_tokens=False)
    try:
        return run_plan_sync(
            items, tokenized, lambda pieces: client.embed_with_usage(pieces, query=query), truncation=truncation,
            specials=specials, max_tokens=client.facts.max_tokens, max_chunks=max_chunks,
        )  # fmt: skip
    except (TooManyChunks, NoRoomForText) as exc:
        raise InvalidInput(str(exc)) from None


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
    _check(truncation)
    if truncation in ("end", "none"):
        return LongResult(await client.embed_with_usage(items, query=query, truncate=truncation == "end"), None)
    full, plain, tokenized = await asyncio.gather(
        client.tokenize(["x"]),
        client.tokenize(["x"], add_special_tokens=False),
        client.tokenize(items, query=query, add_special_tokens=False),
    )

    async def embed(pieces: list[str]) -> EmbeddingResult:
        return await client.embed_with_usage(pieces, query=query)

    specials = special_count(full[0].ids, plain[0].ids)
    return await _run(items, tokenized, embed, truncation, specials, client.facts.max_tokens, max_chunks)


def _check(truncation: str) -> None:
    if truncation not in TRUNCATIONS:
        raise InvalidInput(f"truncation must be one of {', '.join(TRUNCATIONS)}, not {truncation!r}")


async def _run(
    items: list[str],
    tokenized: Sequence[TokenizedText],
    embed: EmbedPieces,
    truncation: Truncation,
    specials: int,
    max_tokens: int,
    max_chunks: int,
) -> LongResult:
    try:
        return await run_plan(
            items, tokenized, embed, truncation=truncation, specials=specials, max_tokens=max_tokens,
            max_chunks=max_chunks,
        )  # fmt: skip
    except (TooManyChunks, NoRoomForText) as exc:
        raise InvalidInput(str(exc)) from None
