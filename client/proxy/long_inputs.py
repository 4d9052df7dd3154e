"""`truncate` START and CHUNK in the proxy: the plan of `long_texts` run through a model's replicas.

Tokens come from `NAME-tokenize`, windows go to `NAME-ids` in fair slices (fair_share.py), texts that fit take
the service's ordinary path (vector cache included), so for them every mode gives the very same vector. What a
mode does, the plan and the pooling are in `client/long_texts.py` and `client/chunking.py`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable

from ..long_texts import (
    TRUNCATIONS,
    LongResult,
    NoRoomForText,
    TooManyChunks,
    Truncation,
    assemble,
    plan_long,
    special_ids,
)
from ..triton_client import EmbeddingResult
from .errors import ProxyError
from .fair_share import FairGate, embed_in_slices
from .replicas import ReplicaSet

EmbedTexts = Callable[[list[str]], Awaitable[EmbeddingResult]]

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
    """`texts` embedded keeping their end ("start") or every window ("chunk"); 400 `too_many_chunks` for a text
    over `max_chunks` windows."""
    specials = _SPECIALS.get(replicas)
    if specials is None:
        full, plain = await asyncio.gather(
            replicas.tokenize(["x"], query=query), replicas.tokenize(["x"], query=query, add_special_tokens=False)
        )
        specials = _SPECIALS[replicas] = special_ids(full[0].ids.tolist(), plain[0].ids.tolist())
    tokenized = await replicas.tokenize(texts, query=query, add_special_tokens=False)
    try:
        plan = plan_long(
            texts, tokenized, truncation=truncation, specials=specials, max_tokens=replicas.facts.max_tokens,
            max_chunks=max_chunks,
        )  # fmt: skip
    except TooManyChunks as exc:
        raise ProxyError(400, f"{exc} (--max-chunks)", param="input", code="too_many_chunks") from None
    except NoRoomForText as exc:
        raise ProxyError(400, str(exc), param="input", code="instruction_too_long") from None
    short, windows = await asyncio.gather(
        embed_texts([texts[i] for i in plan.fitting]) if plan.fitting else _none(),
        embed_in_slices(replicas, gate, plan.rows, ids=True, query=False, truncate=True, slice_tokens=slice_tokens)
        if plan.rows
        else _none(),
    )
    return assemble(plan, short, windows)


async def _none() -> None:
    return None


def truncation_of(value: bool | str) -> Truncation:
    """The body's `truncate`: true / false (OpenAI-compatible servers), or NVIDIA NIM's END / START / NONE, or CHUNK."""
    if isinstance(value, bool):
        return "end" if value else "none"
    mode = value.lower()
    if mode not in TRUNCATIONS:
        raise ProxyError(400, f"truncate must be true, false, NONE, START, END or CHUNK, not {value!r}",
                         param="truncate", code="invalid_value")  # fmt: skip
    return mode  # type: ignore[return-value]
