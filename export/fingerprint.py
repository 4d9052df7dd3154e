"""The export's fingerprint: a digest of everything in the repository that makes its vectors what they are.

The proxy's vector cache (client/proxy/vector_cache.py) keys vectors by it, so a re-export with other weights,
another precision or engine, or another device never answers with the old export's vectors, while replicas
serving one repository (or byte-identical copies of it) share their entries in Redis. It covers the tokenizer,
encoder and pooling models' folders: weights, runner code and config.pbtxt (where engine, device and precision
settings live). A change that cannot change a vector (say, the encoder's instance count) also changes it: a
cold cache, never a wrong vector.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path

from bge_triton.model_facts import ModelFacts

CHUNK = 1 << 20
DIGEST_CHARS = 24  # 96 bits of SHA-256, hex


def folder_digest(folders: list[Path]) -> str:
    """SHA-256 over every file under `folders`: each one's path (relative to its folder's parent) and bytes."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(folder.parent)).encode("utf-8") + b"\0")
            with path.open("rb") as f:
                while block := f.read(CHUNK):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()[:DIGEST_CHARS]


def with_fingerprint(facts: ModelFacts, staging: Path, names: Mapping[str, str]) -> ModelFacts:
    """`facts` with the fingerprint of the tokenizer, encoder and pooling folders already written to `staging`
    (`names`: model_names(facts.name))."""
    folders = [
        staging / names[step] for step in ("tokenizer", "encoder", "pooling") if (staging / names[step]).is_dir()
    ]
    return dataclasses.replace(facts, fingerprint=folder_digest(folders))
