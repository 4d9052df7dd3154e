"""`truncate` START and CHUNK in the proxy: the plan of `client/long_texts.py` run through a model's replicas.

Tokens and their offsets come from `NAME-tokenize`; the pieces (whole texts that fit, tails, windows) take the
service's ordinary text path (fair slices, vector cache), so for a text that fits every mode gives the very same
vector. What a mode does, the plan and the pooling are in `client/long_texts.py` and `client/chunking.py`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable

from ..long_texts import TRUNCATIONS, LongResult, NoRoomForText, TooManyChunks, Truncation, run_plan, special_count
from ..triton_client import EmbeddingResult
from .errors import ProxyError
from .replicas import ReplicaSet

EmbedTexts = Callable[[list[str]], Awaitable[EmbeddingResult]]

_SPECIALS: weakref.WeakKeyDictionary[ReplicaSet, int] = weakref.WeakKeyDictionary()


async def embed_beyond_window(
    replicas: ReplicaSet, texts: list[str], *, query: bool, truncation: Truncation, max_chunks: int,
    embed_texts: EmbedTexts,
) -> LongResult:  # fmt: skip
    """`texts` embedded keeping their end ("start") or every window ("chunk"); `embed_texts` embeds pieces of
    them (with the instruction `query` selects); 400 `too_many_chunks` for a text over `max_chunks` windows."""
    specials = _SPECIALS.get(replicas)
    if specials is None:
        full, plain = await asyncio.gather(
            replicas.tokenize(["x"], query=query), replicas.tokenize(["x"], query=query, add_special_tokens=False)
        )
        specials = _SPECIALS[replicas] = special_count(full[0].ids, plain[0].ids)
    tokenized = await replicas.tokenize(texts, query=query, add_special_tokens=False)
    try:
        return await run_plan(
            texts, tokenized, embed_texts, truncation=truncation, specials=specials,
            max_tokens=replicas.facts.max_tokens, max_chunks=max_chunks,
        )  # fmt: skip
    except TooManyChunks as exc:
        raise ProxyError(400, f"{exc} (--max-chunks)", param="input", code="too_many_chunks") from None
    except NoRoomForText as exc:
        raise ProxyError(400, str(exc), param="input", code="instruction_too_long") from None


def truncation_of(value: bool | str) -> Truncation:
    """The body's `truncate`: true / false (OpenAI-compatible servers), or NVIDIA NIM's END / START / NONE, or CHUNK."""
    if isinstance(value, bool):
        return "end" if value else "none"
    mode = value.lower()
    if mode not in TRUNCATIONS:
        raise ProxyError(400, f"truncate must be true, false, NONE, START, END or CHUNK, not {value!r}",
                         param="truncate", code="invalid_value")  # fmt: skip
    return mode  # type: ignore[return-value]
