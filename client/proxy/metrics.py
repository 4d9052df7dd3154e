"""Prometheus metrics of the proxy (`GET /metrics`), on a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536, 262144)


class KeptLabels:
    """A labelled metric whose children are kept in a dict: prometheus_client's `labels()` takes a lock and checks
    every value on each call (2.5 against 0.6 us kept; an embeddings request asks five times, issue 19). Removing
    any child forgets them all (they are made again on their next use)."""

    def labels(self, *values: str, **named: str) -> Any:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc]
        kept: dict[tuple[str, ...], Any] = self.__dict__.setdefault("_kept_children", {})
        child = kept.get(values)
        if child is None:
            child = kept[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: str) -> None:
        self.__dict__.pop("_kept_children", None)
        super().remove(*values)  # type: ignore[misc]

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        self.__dict__.pop("_kept_children", None)
        super().remove_by_labels(labels)  # type: ignore[misc]

    def clear(self) -> None:
        self.__dict__.pop("_kept_children", None)
        super().clear()  # type: ignore[misc]


class KeptCounter(KeptLabels, Counter):
    pass


class KeptHistogram(KeptLabels, Histogram):
    pass


@dataclass
class ProxyMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = KeptCounter(
            "bge_proxy_requests", "HTTP requests answered", ["endpoint", "model", "status"], registry=r
        )
        self.latency = KeptHistogram(
            "bge_proxy_request_seconds", "HTTP request latency", ["endpoint", "model", "status"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inputs = KeptHistogram(
            "bge_proxy_inputs_per_request", "inputs per embeddings request", ["model"], buckets=COUNT_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.tokens = KeptHistogram(
            "bge_proxy_tokens_per_request", "tokens embedded per request", ["model"], buckets=TOKEN_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.errors = KeptCounter("bge_proxy_errors", "error answers by type", ["type"], registry=r)
        self.in_flight = Gauge("bge_proxy_in_flight_requests", "embeddings requests being served", registry=r)
        self.rejected = Counter("bge_proxy_rejected", "requests refused with 429 (overload)", registry=r)
        self.triton_seconds = KeptHistogram(
            "bge_proxy_triton_seconds", "time spent waiting for Triton per request", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # The vector cache (vector_cache.py): inputs answered from it (tier: local or redis) and sent to Triton
        self.cache_hits = KeptCounter(
            "bge_proxy_cache_hits", "inputs answered from the vector cache", ["model", "tier"], registry=r
        )
        self.cache_misses = KeptCounter(
            "bge_proxy_cache_misses", "inputs the vector cache lacked", ["model"], registry=r
        )
        self.cache_hit_ratio = Gauge("bge_proxy_cache_hit_ratio", "cache hits / inputs looked up, since start",
                                     registry=r)  # fmt: skip
        self.cache_evictions = Counter("bge_proxy_cache_evictions", "entries evicted from the local cache", registry=r)
        self.cache_bytes = Gauge("bge_proxy_cache_bytes", "bytes the local cache holds (of --cache-mb)", registry=r)
        self.cache_entries = Gauge("bge_proxy_cache_entries", "entries in the local cache", registry=r)
        self.cache_redis_errors = Counter("bge_proxy_cache_redis_errors", "failed Redis calls (served as misses)",
                                          registry=r)  # fmt: skip
        self.cache_redis_up = Gauge(
            "bge_proxy_cache_redis_up", "0 while the shared Redis (--cache-url) fails, else 1", registry=r
        )
        self.cache_redis_up.set(1)
