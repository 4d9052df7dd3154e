"""Tensors as Triton's raw input bytes, the layout both wire formats carry (grpc_inference.py, http_inference.py).

BYTES: per element a 4-byte little-endian length and the UTF-8 bytes (tritonclient's `serialize_byte_tensor`);
INT64/INT32/FP32: the array's little-endian bytes, row-major.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_NUMPY_TYPES = {"INT64": np.dtype("<i8"), "INT32": np.dtype("<i4"), "FP32": np.dtype("<f4")}


def raw_contents(chunk: np.ndarray, datatype: str) -> bytes:
    """`chunk` as Triton's raw input bytes (row-major)."""
    if datatype == "BYTES":
        return b"".join(len(item).to_bytes(4, "little") + item for item in map(_as_bytes, chunk.flat))
    return np.ascontiguousarray(chunk, dtype=_NUMPY_TYPES[datatype]).tobytes()


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode("utf-8")
