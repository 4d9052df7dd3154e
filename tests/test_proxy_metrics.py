"""client/proxy/metrics.py: labelled metrics keep their children (no lock and checks per request), and what
Prometheus scrapes is what prometheus_client's own metrics give."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bge_triton.client.proxy.metrics import KeptCounter, KeptHistogram, ProxyMetrics


def test_children_are_kept_and_forgotten_on_remove_and_clear() -> None:
    metrics = ProxyMetrics()
    child = metrics.requests.labels("/v1/embeddings", "e5", "200")
    assert metrics.requests.labels("/v1/embeddings", "e5", "200") is child
    assert metrics.requests.labels(endpoint="/v1/embeddings", model="e5", status="200") is child  # by name too
    child.inc()
    metrics.requests.remove("/v1/embeddings", "e5", "200")
    fresh = metrics.requests.labels("/v1/embeddings", "e5", "200")
    assert fresh is not child and fresh._value.get() == 0  # a removed child is not handed out again
    metrics.requests.clear()
    again = metrics.requests.labels("/v1/embeddings", "e5", "200")
    assert again is not fresh
    metrics.requests.remove_by_labels({"model": "e5"})
    assert metrics.requests.labels("/v1/embeddings", "e5", "200") is not again


def test_scrapes_match_prometheus_clients_own_metrics() -> None:
    kept, plain = CollectorRegistry(), CollectorRegistry()
    counters = [kind("bge_x", "x", ["a", "b"], registry=r) for kind, r in ((KeptCounter, kept), (Counter, plain))]
    histograms = [
        kind("bge_y_seconds", "y", ["a"], buckets=(0.1, 1.0), registry=r)
        for kind, r in ((KeptHistogram, kept), (Histogram, plain))
    ]
    for _ in range(3):
        for counter in counters:
            counter.labels("p", "q").inc(2)
        for histogram in histograms:
            histogram.labels("p").observe(0.5)

    def without_created(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert without_created(kept) == without_created(plain)
    assert 'bge_x_total{a="p",b="q"} 6.0' in without_created(kept)
