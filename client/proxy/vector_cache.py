"""A cache of vectors in the proxy: one entry per text, so only the texts Triton has not embedded yet go to it.

Real traffic repeats itself (the same queries, the same boilerplate passages re-indexed). Each input of a
request is looked up on its own; a batch of 64 texts with 60 hits sends the 4 misses to Triton and answers
with all 64 rows in input order.

The key is a SHA-256 over everything that changes the vector: the served model, the export's identity
(`export_identity`: the facts' `fingerprint`, a digest of the exported files written at export; a digest of the
whole facts record for older exports), the instruction put in front (the query or passage prefix; none for
token ids), the truncation mode, whether the input is text or token ids, and the text (or ids) itself. An entry
holds the full-dimension float32 vector and the input's token counts, so `dimensions` and `usage` are answered
from it exactly as from Triton.

Two tiers, both optional: a per-process LRU bounded in bytes (`--cache-mb`, default 256) and a shared Redis
(`--cache-url`, redis_cache.py) for replicas behind a balancer; a local miss asks Redis, a Redis hit is kept
locally too. The cache never fails a request: a tier that errs is a miss.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from bge_triton.model_facts import ModelFacts

from ..errors import InputTooLong
from ..triton_client import EmbeddingResult
from .metrics import ProxyMetrics
from .settings import ProxySettings

log = logging.getLogger("bge_triton.proxy")

KEY_VERSION = "bge-vec-1"  # bump when the key or the value layout changes: old entries then simply miss
# Bytes an entry costs the process beyond its key and value (the OrderedDict node, two bytes objects' headers),
# counted so `--cache-mb` bounds the memory, not just the payload (measured: ~100 bytes with CPython 3.11).
ENTRY_OVERHEAD = 128
_HEADER = struct.Struct("<II")  # tokens embedded, tokens of the whole input; then float32 little-endian


@dataclass(frozen=True)
class CacheScope:
    """What, besides the input itself, makes a vector what it is."""

    model: str  # the served model name
    export: str  # export_identity(facts)
    instruction: str  # the prefix put in front of the text ("" for token ids or models without one)
    truncate: str  # the truncation mode, as the request gave it
    kind: str  # "text" or "ids"
    dim: int  # full dimension: a stored value of another length is never returned

    def key(self, item: str | Sequence[int]) -> bytes:
        digest = self._prefix_digest.copy()
        if isinstance(item, str):
            digest.update(b"t" + item.encode("utf-8", "surrogatepass"))
        else:
            digest.update(b"i" + np.asarray(item, dtype="<i8").tobytes())
        return digest.digest()

    def _prefix(self) -> bytes:
        fields = asdict(self)
        return json.dumps([KEY_VERSION, fields], ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\0"

    @functools.cached_property
    def _prefix_digest(self) -> hashlib._Hash:  # the scope's part of every key, hashed once per scope
        return hashlib.sha256(self._prefix())


@functools.lru_cache(maxsize=64)
def export_identity(facts: ModelFacts) -> str:
    """The export a vector came from: its fingerprint (a digest of the exported model files, engine and
    precision, written by export), else a digest of the whole facts record (source, precision, window, ...)."""
    fingerprint = getattr(facts, "fingerprint", "")
    if fingerprint:
        return f"fp:{fingerprint}"
    record = json.dumps(asdict(facts), ensure_ascii=False, sort_keys=True)
    return "facts:" + hashlib.sha256(record.encode("utf-8")).hexdigest()[:32]


def encode_entry(vector: np.ndarray, tokens: int, full_tokens: int) -> bytes:
    return _HEADER.pack(int(tokens), min(int(full_tokens), 0xFFFFFFFF)) + np.asarray(vector, "<f4").tobytes()


def decode_entry(value: bytes, dim: int) -> tuple[np.ndarray, int, int] | None:
    """(vector, tokens, full tokens); None for a value that is not a `dim`-long entry."""
    if len(value) != _HEADER.size + 4 * dim:
        return None
    tokens, full = _HEADER.unpack_from(value)
    return np.frombuffer(value, dtype="<f4", offset=_HEADER.size), tokens, full


class LocalVectorCache:
    """Keys -> encoded entries, least recently used first out, at most `max_bytes` counted as key + value +
    ENTRY_OVERHEAD per entry. Plain dict operations: called from the event loop only."""

    def __init__(self, max_bytes: int, metrics: ProxyMetrics | None = None) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self.metrics = metrics
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def cost(key: bytes, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    def get(self, key: bytes) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        cost = self.cost(key, value)
        if cost > self.max_bytes:
            return  # one entry larger than the whole cache: not kept
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= self.cost(key, old)
        self._entries[key] = value
        self.bytes += cost
        evicted = 0
        while self.bytes > self.max_bytes:
            gone_key, gone = self._entries.popitem(last=False)
            self.bytes -= self.cost(gone_key, gone)
            evicted += 1
        self.evictions += evicted
        if self.metrics is not None:
            if evicted:
                self.metrics.cache_evictions.inc(evicted)
            self.metrics.cache_bytes.set(self.bytes)
            self.metrics.cache_entries.set(len(self._entries))


class SharedTier(Protocol):
    """A cache shared between proxies (redis_cache.RedisVectorCache): never raises, a failure is a miss."""

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    async def put_many(self, entries: Sequence[tuple[bytes, bytes]]) -> None: ...

    async def close(self) -> None: ...


class VectorCache:
    """The tiers together: the local LRU first, then the shared tier; hits and misses counted per model."""

    def __init__(self, local: LocalVectorCache | None, shared: SharedTier | None, metrics: ProxyMetrics) -> None:
        self.local = local
        self.shared = shared
        self.metrics = metrics
        self.hits = 0
        self.misses = 0

    async def lookup(self, keys: Sequence[bytes]) -> list[tuple[bytes, str] | None]:
        """Each key's value and the tier that had it ("local" or "redis"), or None."""
        found: list[tuple[bytes, str] | None] = [None] * len(keys)
        if self.local is not None:
            for i, key in enumerate(keys):
                value = self.local.get(key)
                if value is not None:
                    found[i] = (value, "local")
        wanted = [i for i, v in enumerate(found) if v is None]
        if self.shared is not None and wanted:
            for i, value in zip(wanted, await self.shared.get_many([keys[i] for i in wanted]), strict=True):
                if value is not None:
                    found[i] = (value, "redis")
                    if self.local is not None:
                        self.local.put(keys[i], value)
        return found

    def count(self, model: str, local_hits: int, shared_hits: int, misses: int) -> None:
        # every series from the first request on, zeros included (dashboards and alerts divide by them)
        self.metrics.cache_hits.labels(model, "local").inc(local_hits)
        self.metrics.cache_hits.labels(model, "redis").inc(shared_hits)
        self.metrics.cache_misses.labels(model).inc(misses)
        self.hits += local_hits + shared_hits
        self.misses += misses
        self.metrics.cache_hit_ratio.set(self.hits / max(self.hits + self.misses, 1))

    async def store(self, entries: Sequence[tuple[bytes, bytes]]) -> None:
        if self.local is not None:
            for key, value in entries:
                self.local.put(key, value)
        if self.shared is not None and entries:
            await self.shared.put_many(entries)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


def vector_cache(settings: ProxySettings, metrics: ProxyMetrics) -> VectorCache | None:
    """The cache `settings` ask for (`cache_mb`, `cache_url`); None when both are off."""
    local = LocalVectorCache(settings.cache_mb * 1024 * 1024, metrics) if settings.cache_mb > 0 else None
    shared: SharedTier | None = None
    if settings.cache_url:
        from .redis_cache import RedisVectorCache  # only a proxy with --cache-url needs redis-py

        shared = RedisVectorCache(settings.cache_url, metrics, ttl_s=settings.cache_ttl_s)
    if local is None and shared is None:
        return None
    return VectorCache(local, shared, metrics)


Embed = Callable[[list], Awaitable[EmbeddingResult]]


async def embed_cached(cache: VectorCache | None, scope: CacheScope, items: list, embed: Embed) -> EmbeddingResult:
    """`items` embedded in input order: rows found in `cache` from it, the rest (each distinct input once) by
    `embed`, then stored. Without a cache, just `embed(items)`."""
    if cache is None:
        return await embed(items)
    keys = [scope.key(item) for item in items]
    rows: list[tuple[np.ndarray, int, int] | None] = [None] * len(items)
    tiers = {"local": 0, "redis": 0}
    for index, hit in enumerate(await cache.lookup(keys)):
        if hit is not None:
            rows[index] = decode_entry(hit[0], scope.dim)  # a value of another shape: a miss
            tiers[hit[1]] += rows[index] is not None
    missing: dict[bytes, list[int]] = {}  # each distinct missing input once
    for index, row in enumerate(rows):
        if row is None:
            missing.setdefault(keys[index], []).append(index)
    cache.count(scope.model, tiers["local"], tiers["redis"], len(items) - tiers["local"] - tiers["redis"])
    if missing:
        first = [indices[0] for indices in missing.values()]
        try:
            result = await embed([items[i] for i in first])
        except InputTooLong as exc:  # the miss list's index -> the request's
            raise InputTooLong(first[exc.index], exc.tokens, exc.max_tokens) from None
        entries = []
        for j, indices in enumerate(missing.values()):
            row = (result.vectors[j], int(result.token_counts[j]), int(result.full_token_counts[j]))
            for index in indices:
                rows[index] = row
            entries.append((keys[indices[0]], encode_entry(*row)))
        await cache.store(entries)
    vectors = np.empty((len(items), scope.dim), dtype=np.float32)
    counts = np.empty(len(items), dtype=np.int64)
    full = np.empty(len(items), dtype=np.int64)
    for index, row in enumerate(rows):
        assert row is not None
        vectors[index], counts[index], full[index] = row
    return EmbeddingResult(vectors, counts, full)
