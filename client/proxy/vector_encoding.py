"""Compact vectors: `embedding_type` (float, int8, uint8, binary, ubinary) and `encoding_format` (JSON, base64).

The quantisation is sentence-transformers' `quantize_embeddings` (sentence_transformers.util.quantization), with
one difference that matters for a server: its int8/uint8 ranges come, unless given, from the batch being
quantised, so a vector's bytes would depend on which other texts shared its request. Here the ranges are fixed:
[-1, 1] in every dimension. The vectors are unit length (and `dimensions` re-normalises), so no component ever
leaves that range and nothing is clipped; the result is exactly
`quantize_embeddings(vectors, precision, ranges=int8_ranges(dim))`:

- int8:    floor((x + 1) / (2 / 255)) - 128, in [-128, 127]
- uint8:   floor((x + 1) / (2 / 255)),       in [0, 255]
- binary:  np.packbits(x > 0) - 128 as int8 (8 dimensions a byte, the first in the high bit; padded with 0 bits)
- ubinary: np.packbits(x > 0) as uint8

JSON gives the integers; base64 the raw bytes (float: little-endian float32, as OpenAI's API).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..compact_vectors import (  # noqa: F401 (re-exported)
    EMBEDDING_TYPES,
    EmbeddingType,
    first_dimensions,
    int8_ranges,
    quantize,
)

if TYPE_CHECKING:
    from ..long_texts import TextChunks


def encode_rows(rows: np.ndarray, encoding_format: Literal["float", "base64"]) -> list:
    """Per row what the response's `embedding` holds: numbers (JSON) or a base64 string of the row's bytes."""
    if encoding_format == "base64":
        if rows.dtype == np.float32:
            rows = rows.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    if rows.dtype == np.float32:
        return list(rows)  # orjson writes float32 arrays itself
    return rows.astype(np.int64).tolist()


def decode_row(data: str | list, embedding_type: EmbeddingType) -> np.ndarray:
    """The inverse of `encode_rows` for one row (clients and tests): the row's values in their dtype."""
    dtype = {"float": "<f4", "int8": np.int8, "binary": np.int8, "uint8": np.uint8, "ubinary": np.uint8}[embedding_type]
    if isinstance(data, str):
        return np.frombuffer(base64.b64decode(data), dtype=dtype).copy()
    return np.asarray(data, dtype=dtype)


def response_items(
    vectors: np.ndarray,
    chunks: Sequence[TextChunks] | None,
    *,
    dimensions: int | None,
    embedding_type: EmbeddingType,
    encoding_format: Literal["float", "base64"],
) -> list[dict[str, Any]]:
    """`data` of an embeddings response: per input its (cut, then quantised) vector, and with `chunks` its
    windows' vectors and character spans."""
    rows = encode_rows(quantize(vectors, embedding_type), encoding_format)
    items: list[dict[str, Any]] = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)]
    for item, text in zip(items, chunks or [], strict=False):
        encoded = encode_rows(quantize(first_dimensions(text.vectors, dimensions), embedding_type), encoding_format)
        item["chunks"] = [
            {"embedding": e, "start": start, "stop": stop, "tokens": tokens}
            for e, (start, stop), tokens in zip(encoded, text.spans, text.tokens, strict=True)
        ]
    return items
