"""The vector cache on repeated traffic: `python -m bge_triton.bench.cache_bench --repository DIR --model NAME`.

A Zipf-distributed stream of single-text requests (default 10,000 over 2,000 distinct short texts, exponent 1.0:
a few texts very often, most rarely, as search queries are) is sent through the OpenAI proxy twice, each time
with a fresh Triton and proxy: with `--no-cache` and with the default cache (`--cache-mb 256`). Both start cold;
the warm-up uses texts outside the stream. Reports texts/s, p50/p99 latency and the cache's hit ratio, and
writes `bench/results/<date>-<host>-<model>-zipf.json` (harness.py's layout: one entry per system).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bge_triton.model_facts import read_facts

from .harness import RESULTS_DIR, _cpu_name
from .runner import percentiles
from .systems import CachedProxySystem, ProxySystem, Spec
from .workloads import make_texts

SYSTEMS: dict[str, type[ProxySystem]] = {"proxy": ProxySystem, "proxy-cached": CachedProxySystem}


def zipf_stream(distinct: int, requests: int, exponent: float, seed: int = 0) -> list[int]:
    """`requests` indices into `distinct` texts, rank r drawn with probability proportional to 1 / r**exponent."""
    weights = 1.0 / np.arange(1, distinct + 1, dtype=np.float64) ** exponent
    rng = np.random.default_rng(seed)
    return rng.choice(distinct, size=requests, p=weights / weights.sum()).tolist()


def distinct_texts(tokenizer_json: Path, n: int, max_tokens: int, workload: str = "short") -> list[str]:
    """`n` different texts of the workload's length (the sentence pool repeats: drop duplicates, draw more)."""
    seen: dict[str, None] = {}
    seed = 100
    while len(seen) < n:
        for text in make_texts(tokenizer_json, workload, 2 * n, max_tokens, seed=seed):
            seen.setdefault(text)
        seed += 1
    return list(seen)[:n]


async def _drive(url: str, model: str, texts: list[str], concurrency: int) -> tuple[list[float], float]:
    queue = list(reversed(texts))
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            while queue:
                body = {"model": model, "input": queue.pop(), "encoding_format": "base64"}
                started = time.perf_counter()
                (await client.post(f"{url}/v1/embeddings", json=body)).raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def _counter(metrics: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", metrics, flags=re.M))


def measure(system: ProxySystem, model: str, stream: list[str], warmup: list[str], concurrency: int) -> dict:
    system.start()
    try:
        asyncio.run(_drive(system.url, model, warmup, concurrency))
        latencies, seconds = asyncio.run(_drive(system.url, model, stream, concurrency))
        metrics = httpx.get(f"{system.url}/metrics", timeout=10).text
    finally:
        system.stop()
    hits, misses = _counter(metrics, "bge_proxy_cache_hits_total"), _counter(metrics, "bge_proxy_cache_misses_total")
    return {
        "texts_per_s": round(len(stream) / seconds, 2),
        "seconds": round(seconds, 2),
        "latency_ms": percentiles(latencies),
        "cache_hits": int(hits),
        "cache_misses": int(misses),
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
    }


def run(args: argparse.Namespace) -> dict:
    facts = read_facts(args.repository / args.model)
    tokenizer_json = args.repository / f"{args.model}-tokenizer/1/tokenizer.json"
    texts = distinct_texts(tokenizer_json, args.distinct + 16, facts.max_tokens)
    pool, warmup = texts[: args.distinct], texts[args.distinct :]
    indices = zipf_stream(args.distinct, args.requests, args.exponent)
    stream = [pool[i] for i in indices]
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],  # other work on the machine skews it
        "model": args.model,
        "workload": "zipf",
        "options": {
            "requests": args.requests,
            "distinct": args.distinct,
            "exponent": args.exponent,
            "concurrency": args.concurrency,
            "threads": args.threads,
            "texts": "short (16 tokens)",
            "distinct_in_stream": len(set(indices)),
        },
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="bge-cache-bench-") as tmp:
        spec = Spec(checkpoint=Path("-"), repository=args.repository, model=args.model, threads=args.threads,
                    work_dir=Path(tmp))  # fmt: skip
        for name, cls in SYSTEMS.items():
            print(f"[cache-bench] {name} ...", file=sys.stderr, flush=True)
            report["systems"][name] = measure(cls(spec, name=name), args.model, stream, warmup, args.concurrency)
    plain, cached = report["systems"]["proxy"], report["systems"]["proxy-cached"]
    report["ratios"] = {"cached_vs_uncached_texts_per_s": round(cached["texts_per_s"] / plain["texts_per_s"], 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}-{args.model}-zipf.json"
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_table(report))
    print(f"wrote {out}")
    return report


def format_table(report: dict) -> str:
    o = report["options"]
    lines = [
        f"{report['model']} · {o['requests']} single-text requests, Zipf({o['exponent']}) over {o['distinct']} "
        f"texts ({o['distinct_in_stream']} drawn) · concurrency {o['concurrency']} · {report['cores']} cores",
        "",
        "| system | texts/s | p50 | p99 | cache hit ratio |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["systems"].items():
        ratio = "–" if r["hit_ratio"] is None else f"{100 * r['hit_ratio']:.1f}%"
        lines.append(f"| {name} | {r['texts_per_s']:.1f} | {r['latency_ms']['p50']:.1f} ms | "
                     f"{r['latency_ms']['p99']:.1f} ms | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--distinct", type=int, default=2_000)
    p.add_argument("--exponent", type=float, default=1.0, help="Zipf exponent s (rank r drawn ~ 1/r^s)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads in Triton")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
