"""Compact vectors for the client library and the proxy: `dimensions` (the first components, re-normalised) and
`embedding_type` (float, int8, uint8, binary, ubinary) with fixed calibration ranges.

sentence-transformers' `quantize_embeddings` takes its int8/uint8 ranges, unless given, from the batch being
quantised, so a vector's bytes would depend on which other vectors shared its call. Here the ranges are fixed:
[-1, 1] in every dimension (unit vectors never leave it), so the result is exactly
`quantize_embeddings(vectors, precision, ranges=int8_ranges(dim))` and the same for a vector alone or in a batch:

- int8:    floor((x + 1) / (2 / 255)) - 128, in [-128, 127]
- uint8:   floor((x + 1) / (2 / 255)),       in [0, 255]
- binary:  np.packbits(x > 0) - 128 as int8 (8 dimensions a byte, the first in the high bit; padded with 0 bits)
- ubinary: np.packbits(x > 0) as uint8

The proxy's `embedding_type` (client/proxy/vector_encoding.py) is this function; a client-library user applies it
to `EmbeddingClient.embed`'s vectors and gets the same bytes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary"]
EMBEDDING_TYPES: tuple[EmbeddingType, ...] = ("float", "int8", "uint8", "binary", "ubinary")
RANGE = 1.0  # int8 / uint8 ranges: [-RANGE, RANGE] in every dimension


def int8_ranges(dim: int) -> np.ndarray:
    """The fixed calibration ranges (float32 [2, dim]: starts, ends) of int8 and uint8."""
    return np.vstack((np.full(dim, -RANGE), np.full(dim, RANGE))).astype(np.float32)


def quantize(vectors: np.ndarray, embedding_type: EmbeddingType) -> np.ndarray:
    """float32 [n, dim] (unit rows) -> [n, dim] float32 / int8 / uint8, or [n, ceil(dim / 8)] packed bits."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if embedding_type == "float":
        return vectors
    if embedding_type in ("int8", "uint8"):
        ranges = int8_ranges(vectors.shape[1])
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        levels = np.clip(np.floor((vectors - starts) / steps), 0, 255)
        return levels.astype(np.uint8) if embedding_type == "uint8" else (levels - 128).astype(np.int8)
    bits = np.packbits(vectors > 0, axis=-1)
    if embedding_type == "ubinary":
        return bits
    if embedding_type == "binary":
        return (bits - 128).astype(np.int8)
    raise ValueError(f"unknown embedding_type {embedding_type!r} ({', '.join(EMBEDDING_TYPES)})")


def first_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components of unit rows, re-normalised (the `dimensions` field)."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    short = vectors[:, :dimensions]
    return (short / np.maximum(np.linalg.norm(short, axis=1, keepdims=True), 1e-12)).astype(np.float32)
