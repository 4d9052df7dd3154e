"""The proxy's vector cache (client/proxy/vector_cache.py, redis_cache.py): only misses reach Triton, a hit is
bit-identical to what Triton answers, no entry is ever served for another model, export, instruction,
truncation or input kind, the byte bound holds, and a shared Redis that dies and comes back never fails a
request."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from conftest import BGE
from conftest import BGE_INSTRUCTION as INSTRUCTION

from bge_triton.client.errors import InputTooLong
from bge_triton.client.proxy.metrics import ProxyMetrics
from bge_triton.client.proxy.settings import ProxySettings
from bge_triton.client.proxy.vector_cache import (
    ENTRY_OVERHEAD,
    CacheScope,
    LocalVectorCache,
    VectorCache,
    embed_cached,
    encode_entry,
    export_identity,
    vector_cache,
)
from bge_triton.client.triton_client import EmbeddingResult
from bge_triton.export.exporter import ExportResult
from bge_triton.export.fingerprint import folder_digest
from bge_triton.launcher import TritonOptions, free_port
from bge_triton.model_facts import ModelFacts, read_facts

if TYPE_CHECKING:
    from conftest import Service

MODEL = "all-MiniLM-L6-v2"
DIM = 8
SCOPE = CacheScope(model="m", export="fp:abc", instruction="", truncate="True", kind="text", dim=DIM)


# -- the cache itself, with a counting fake in place of Triton -------------------------------------------------


class CountingTriton:
    """Embeds each text as a deterministic vector and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, items: list) -> EmbeddingResult:
        self.calls.append(list(items))
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(DIM).astype(np.float32) for t in items]
        vectors = np.stack(rows) / np.linalg.norm(np.stack(rows), axis=1, keepdims=True)
        counts = np.array([len(t) + 2 for t in items], dtype=np.int64)
        return EmbeddingResult(vectors.astype(np.float32), counts, counts + 1)


def _cache(max_bytes: int = 1 << 20) -> VectorCache:
    metrics = ProxyMetrics()
    return VectorCache(LocalVectorCache(max_bytes, metrics), None, metrics)


def test_a_batch_of_64_with_60_hits_sends_only_the_4_misses() -> None:
    cache, triton = _cache(), CountingTriton()
    texts = [f"text {i}" for i in range(64)]
    first = asyncio.run(embed_cached(cache, SCOPE, texts[:60], triton))
    assert triton.calls == [texts[:60]]
    mixed = [texts[63], *texts[:30], texts[61], *texts[30:60], texts[62], texts[60]]  # hits and misses interleaved
    result = asyncio.run(embed_cached(cache, SCOPE, mixed, triton))
    assert triton.calls[1] == [texts[63], texts[61], texts[62], texts[60]]
    fresh = asyncio.run(triton(mixed))  # what Triton would have answered for the whole batch
    assert result.vectors.tobytes() == fresh.vectors.tobytes()  # in input order, bit for bit
    assert result.token_counts.tolist() == fresh.token_counts.tolist()
    assert result.full_token_counts.tolist() == fresh.full_token_counts.tolist()
    assert first.vectors.tobytes() == fresh.vectors[1:31].tobytes() + fresh.vectors[32:62].tobytes()
    assert (cache.hits, cache.misses) == (60, 64)
    samples = {s.name: s.value for m in cache.metrics.registry.collect() for s in m.samples}
    assert samples["bge_proxy_cache_hit_ratio"] == pytest.approx(60 / 124)


def test_duplicates_within_a_request_are_embedded_once() -> None:
    cache, triton = _cache(), CountingTriton()
    result = asyncio.run(embed_cached(cache, SCOPE, ["a", "b", "a", "a"], triton))
    assert triton.calls == [["a", "b"]]
    assert result.vectors[0].tobytes() == result.vectors[2].tobytes() == result.vectors[3].tobytes()


def test_an_over_long_miss_is_reported_at_its_index_in_the_request() -> None:
    cache = _cache()
    asyncio.run(embed_cached(cache, SCOPE, ["seen"], CountingTriton()))

    async def refusing(items: list) -> EmbeddingResult:
        raise InputTooLong(1, 999, 256)  # the second of the misses

    with pytest.raises(InputTooLong) as caught:
        asyncio.run(embed_cached(cache, SCOPE, ["seen", "new", "seen", "long"], refusing))
    assert caught.value.index == 3


def test_keys_separate_everything_that_changes_the_vector() -> None:
    variants = [
        SCOPE,
        CacheScope("other-model", "fp:abc", "", "True", "text", DIM),
        CacheScope("m", "fp:another-export", "", "True", "text", DIM),
        CacheScope("m", "fp:abc", "query: ", "True", "text", DIM),
        CacheScope("m", "fp:abc", "", "False", "text", DIM),
        CacheScope("m", "fp:abc", "", "'START'", "text", DIM),
        CacheScope("m", "fp:abc", "", "True", "ids", DIM),
        CacheScope("m", "fp:abc", "", "True", "text", 2 * DIM),
    ]
    keys = {scope.key("12") for scope in variants} | {SCOPE.key([1, 2]), SCOPE.key("1 2"), SCOPE.key("12 ")}
    assert len(keys) == len(variants) + 3
    assert SCOPE.key("12") == CacheScope("m", "fp:abc", "", "True", "text", DIM).key("12")  # stable


def test_export_identity_follows_the_export() -> None:
    facts = ModelFacts("m", "src", "bert", 8, 256, "mean", True, "", "", 0, True, 100)
    assert export_identity(facts) == export_identity(ModelFacts.from_json(facts.to_json()))
    for changed in ({"precision": "fp16"}, {"source": "other"}, {"max_tokens": 128}):
        assert export_identity(ModelFacts.from_dict({**facts.__dict__, **changed})) != export_identity(facts)
    if "fingerprint" in ModelFacts.__dataclass_fields__:  # exports that carry a digest of their files
        stamped = ModelFacts.from_dict({**facts.__dict__, "fingerprint": "0123abcd"})
        assert export_identity(stamped) == "fp:0123abcd"


def test_export_writes_a_fingerprint_of_the_files_that_make_the_vectors(exported: ExportResult, tmp_path: Path) -> None:
    facts, repo = read_facts(exported.ensemble_dir), exported.ensemble_dir.parent
    assert re.fullmatch(r"[0-9a-f]{24}", facts.fingerprint) and facts == exported.facts
    steps = [repo / f"{facts.name}-{step}" for step in ("tokenizer", "encoder", "pooling")]
    assert folder_digest(steps) == facts.fingerprint  # the files as served still are the export's
    copies = [Path(shutil.copytree(step, tmp_path / step.name)) for step in steps]
    assert folder_digest(copies) == facts.fingerprint  # a copy of the repository shares the entries
    config = copies[1] / "config.pbtxt"  # engine, device and precision settings live there
    config.write_text(config.read_text() + "\n# another engine setting\n")
    assert folder_digest(copies) != facts.fingerprint
    assert export_identity(facts) == f"fp:{facts.fingerprint}"


def test_a_value_of_another_shape_is_a_miss() -> None:
    cache, triton = _cache(), CountingTriton()
    cache.local.put(SCOPE.key("x"), encode_entry(np.ones(DIM + 1, np.float32), 3, 3))  # type: ignore[union-attr]
    result = asyncio.run(embed_cached(cache, SCOPE, ["x"], triton))
    assert triton.calls == [["x"]] and result.vectors.shape == (1, DIM)


def test_the_byte_bound_holds_and_evictions_are_counted_least_recently_used_first() -> None:
    entry = encode_entry(np.zeros(DIM, np.float32), 1, 1)
    cost = 32 + len(entry) + ENTRY_OVERHEAD
    metrics = ProxyMetrics()
    local = LocalVectorCache(10 * cost, metrics)
    keys = [bytes([i]) * 32 for i in range(25)]
    for key in keys[:10]:
        local.put(key, entry)
    assert (len(local), local.bytes, local.evictions) == (10, 10 * cost, 0)
    assert local.get(keys[0]) is not None  # now the most recently used
    for key in keys[10:25]:
        local.put(key, entry)
        assert local.bytes <= local.max_bytes
    assert (len(local), local.evictions) == (10, 15)
    assert local.get(keys[0]) is None and local.get(keys[1]) is None and local.get(keys[24]) is not None
    samples = {s.name: s.value for m in metrics.registry.collect() for s in m.samples}
    assert samples["bge_proxy_cache_evictions_total"] == 15
    assert samples["bge_proxy_cache_bytes"] == 10 * cost and samples["bge_proxy_cache_entries"] == 10
    local.put(b"k" * 32, b"v" * (11 * cost))  # larger than the whole cache: not kept, nothing evicted
    assert len(local) == 10 and local.evictions == 15


def test_settings_choose_the_tiers() -> None:
    metrics = ProxyMetrics()
    assert vector_cache(ProxySettings(cache_mb=0), metrics) is None
    default = vector_cache(ProxySettings(), metrics)
    assert default is not None and default.local is not None and default.local.max_bytes == 256 * 2**20
    assert default.shared is None
    with pytest.raises(ValueError, match="redis://"):
        ProxySettings(cache_url="http://127.0.0.1:6379")


# -- a real proxy in front of a real tritonserver ---------------------------------------------------------------


def _proxy(spawn: Callable[..., Service], grpc_url: str, *extra: str) -> Service:
    port = free_port()
    return spawn(["serve-proxy", "--triton-url", grpc_url, "--port", str(port), *extra], port=port,
                 ready_path="/ready")  # fmt: skip


@pytest.fixture(scope="module")
def cached(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    return _proxy(spawn, triton.grpc_url, "--cache-mb", "16")


@pytest.fixture(scope="module")
def uncached(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    return _proxy(spawn, triton.grpc_url, "--no-cache")


def _post(proxy: Service, body: dict, status: int = 200) -> dict:
    response = httpx.post(f"{proxy.url}/v1/embeddings", json={"encoding_format": "base64", **body}, timeout=120)
    assert response.status_code == status, response.text
    return response.json()


def _raw(answer: dict) -> list[bytes]:
    return [base64.b64decode(row["embedding"]) for row in answer["data"]]


def _encoder_rows(triton: TritonOptions, model: str = MODEL) -> int:
    """Rows Triton's encoder has embedded so far (its statistics' inference_count)."""
    stats = httpx.get(f"{triton.http_url}/v2/models/{model}-encoder/stats", timeout=10).json()["model_stats"][0]
    return int(stats.get("inference_count", 0))


def _metric(proxy: Service, name: str, labels: str = "") -> float:
    text = httpx.get(f"{proxy.url}/metrics", timeout=10).text
    pattern = rf"^{re.escape(name)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})? (\S+)$"
    return sum(float(m.group(2)) for m in re.finditer(pattern, text, flags=re.M))


def test_hits_are_bit_identical_to_triton_and_only_misses_reach_it(
    cached: Service, uncached: Service, triton: TritonOptions
) -> None:
    texts = [f"cache parity sentence number {i} about vector search" for i in range(64)]
    truth = _post(uncached, {"model": MODEL, "input": texts})
    rows = _encoder_rows(triton)
    first = _post(cached, {"model": MODEL, "input": texts[:60]})
    assert _encoder_rows(triton) - rows == 60
    assert _raw(first) == _raw(truth)[:60]
    rows = _encoder_rows(triton)
    hits = _metric(cached, "bge_proxy_cache_hits_total", 'tier="local"')
    second = _post(cached, {"model": MODEL, "input": texts})  # 60 hits, 4 misses
    assert _encoder_rows(triton) - rows == 4
    assert _raw(second) == _raw(truth)
    assert second["usage"] == truth["usage"]
    assert _metric(cached, "bge_proxy_cache_hits_total", 'tier="local"') - hits == 60
    # `dimensions` is cut from the cached full-dimension vector exactly as from Triton's
    short = _post(cached, {"model": MODEL, "input": texts[:3], "dimensions": 64})
    assert _encoder_rows(triton) - rows == 4  # all three from the cache
    assert _raw(short) == _raw(_post(uncached, {"model": MODEL, "input": texts[:3], "dimensions": 64}))
    assert 0 < _metric(cached, "bge_proxy_cache_bytes") <= 16 * 2**20
    assert 0 < _metric(cached, "bge_proxy_cache_hit_ratio") < 1


def test_a_text_cached_with_truncation_is_still_refused_without_it(cached: Service, uncached: Service) -> None:
    text = "token " * 400  # over MiniLM's 256-token window
    truncated = _post(cached, {"model": MODEL, "input": [text]})
    assert truncated["usage"]["prompt_tokens"] == 256
    refused = httpx.post(f"{cached.url}/v1/embeddings", json={"model": MODEL, "input": [text], "truncate": False})
    assert refused.status_code == 400, refused.text
    assert (
        refused.json()
        == httpx.post(f"{uncached.url}/v1/embeddings", json={"model": MODEL, "input": [text], "truncate": False}).json()
    )


def test_query_and_passage_never_share_an_entry(two_model_triton: TritonOptions, spawn: Callable[..., Service]) -> None:
    cached = _proxy(spawn, two_model_triton.grpc_url)
    uncached = _proxy(spawn, two_model_triton.grpc_url, "--no-cache")
    text = "向量检索的缓存"
    passage = _raw(_post(cached, {"model": BGE, "input": [text]}))
    query = _raw(_post(cached, {"model": BGE, "input": [text], "input_type": "query"}))
    assert passage != query  # the query got its instruction, not the passage's cached vector
    assert query == _raw(_post(uncached, {"model": BGE, "input": [INSTRUCTION + text]}))
    assert query == _raw(_post(cached, {"model": f"{BGE}-query", "input": [text]}))
    assert passage == _raw(_post(uncached, {"model": BGE, "input": [text]}))
    minilm = _raw(_post(cached, {"model": MODEL, "input": [text]}))  # same text, another model
    assert len(minilm[0]) != len(passage[0]) or minilm != passage
    assert minilm == _raw(_post(uncached, {"model": MODEL, "input": [text]}))


# -- a shared Redis that dies and comes back ---------------------------------------------------------------------


class RedisServer:
    """Debian's redis-server on a loopback port, without persistence."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if out.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def keys(self) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "dbsize"], capture_output=True, text=True)
        return int(out.stdout.strip())


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed (./install.sh --with-bench-tools installs Debian's)")
    server = RedisServer(free_port(), tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_replicas_share_vectors_through_redis_and_survive_its_death(
    redis_server: RedisServer, triton: TritonOptions, spawn: Callable[..., Service], uncached: Service
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    one = _proxy(spawn, triton.grpc_url, "--cache-mb", "0", "--cache-url", url)  # Redis only: every hit is shared
    two = _proxy(spawn, triton.grpc_url, "--cache-mb", "0", "--cache-url", url)
    texts = [f"shared cache sentence {i}" for i in range(8)]
    truth = _raw(_post(uncached, {"model": MODEL, "input": texts}))

    assert _raw(_post(one, {"model": MODEL, "input": texts})) == truth
    assert redis_server.keys() == 8
    rows = _encoder_rows(triton)
    assert _raw(_post(two, {"model": MODEL, "input": texts})) == truth  # the other replica's vectors
    assert _encoder_rows(triton) == rows
    assert _metric(two, "bge_proxy_cache_hits_total", 'tier="redis"') == 8

    redis_server.kill()
    for _ in range(3):  # Redis gone: misses, answered by Triton, never an error
        started = time.monotonic()
        assert _raw(_post(one, {"model": MODEL, "input": texts})) == truth
        assert time.monotonic() - started < 5
    assert _encoder_rows(triton) == rows + 24
    assert _metric(one, "bge_proxy_cache_redis_up") == 0
    assert _metric(one, "bge_proxy_cache_redis_errors_total") >= 1
    assert one.log_text().count("vector cache: Redis at") == 1  # one warning, not one per request

    redis_server.start()  # back, empty
    deadline = time.monotonic() + 15
    while _metric(one, "bge_proxy_cache_redis_up") != 1 or redis_server.keys() < 8:
        assert time.monotonic() < deadline, one.log_text()[-2000:]
        _post(one, {"model": MODEL, "input": texts})
        time.sleep(0.5)
    rows = _encoder_rows(triton)
    hits = _metric(two, "bge_proxy_cache_hits_total", 'tier="redis"')
    assert _raw(_post(two, {"model": MODEL, "input": texts})) == truth
    assert _encoder_rows(triton) == rows  # hits again
    assert _metric(two, "bge_proxy_cache_hits_total", 'tier="redis"') - hits == 8
    assert "answers again" in one.log_text()


# -- the alert and the dashboard ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_the_65_percent_hit_rate_alert_reads_series_the_proxy_exports(cached: Service) -> None:
    import yaml

    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    rules = {r["alert"]: r for g in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
             for r in g["rules"]}  # fmt: skip
    low = rules["VectorCacheHitRateLow"]
    assert "< 0.65" in low["expr"] and low["for"] == "15m"
    _post(cached, {"model": MODEL, "input": ["alert probe"]})
    exported = httpx.get(f"{cached.url}/metrics", timeout=10).text
    for rule in rules.values():
        for name in set(re.findall(r"bge_proxy_[a-z_]+", rule["expr"])):
            assert re.search(rf"^{name}[{{ ]", exported, flags=re.M), name
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/bge-triton.json").read_text())
    cache_panels = [p for p in dashboard["panels"] if "cache" in p["title"].lower()]
    assert len(cache_panels) == 2 and any("65%" in p["title"] for p in cache_panels)


def test_compose_proxies_share_a_bounded_redis() -> None:
    import yaml

    from bge_triton.cli import build_parser

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    args = build_parser().parse_args(["serve-proxy", *services["proxy"]["command"]])
    assert args.cache_url == "redis://redis:6379/0" and not args.no_cache and args.cache_mb == 256
    redis = services["redis"]["command"]
    assert redis[redis.index("--maxmemory-policy") + 1] == "allkeys-lru" and "--maxmemory" in redis


# -- the benchmark's workload ------------------------------------------------------------------------------------


def test_the_zipf_stream_repeats_the_top_ranks_and_is_reproducible() -> None:
    from bge_triton.bench.cache_bench import zipf_stream

    stream = zipf_stream(2000, 10_000, 1.0)
    assert stream == zipf_stream(2000, 10_000, 1.0) and len(stream) == 10_000
    counts = np.bincount(stream, minlength=2000)
    # rank r is drawn with probability 1/(r * H_2000), H_2000 ~ 8.18: rank 1 ~ 12%, rank 10 ~ 1.2%
    assert 0.10 < counts[0] / 10_000 < 0.14 and counts[0] > counts[9] > counts[99]
    assert 1000 < len(set(stream)) < 2000  # a long tail: many texts seen once, some never
