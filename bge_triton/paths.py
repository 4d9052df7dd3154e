"""Where bge-triton keeps its own files (cached default repository, backend links)."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """$BGE_TRITON_HOME, else $XDG_CACHE_HOME/bge-triton, else ~/.cache/bge-triton."""
    explicit = os.environ.get("BGE_TRITON_HOME")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bge-triton"


def default_repository() -> Path:
    return data_home() / "model_repository"
