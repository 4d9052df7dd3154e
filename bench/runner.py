"""Measure one system in a process of its own: `python -m bge_triton.bench.runner SPEC.json`.

A fresh process per system keeps thread budgets and peak RSS apart. The last line printed is the
result as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil

from .systems import SYSTEMS, Spec, System, TritonSystem

T = TypeVar("T")


@dataclass
class Plan:
    system: str
    spec: Spec
    texts: list[str]  # saturation texts
    tokens: int  # their token count (special tokens included)
    queries: list[str]  # single-text requests for the latency runs
    batch: int = 16  # texts per request at saturation
    concurrency: int = 8

    @classmethod
    def from_json(cls, path: Path) -> Plan:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        spec = Spec(**{k: Path(v) if k in ("checkpoint", "repository", "work_dir") else v
                       for k, v in raw.pop("spec").items()})  # fmt: skip
        return cls(spec=spec, **raw)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}


class PeakRss:
    def __init__(self, pids: list[int]):
        self.pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.pids:
                try:
                    proc = psutil.Process(pid)
                    total += sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.1)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`main` on uvloop where installed (as the proxy runs), else asyncio's loop: the load generator's own event
    loop costs as little as it can."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _timed(system: System, texts: list[str], out: list[float]) -> None:
    started = time.perf_counter()
    await system.embed(texts)
    out.append(time.perf_counter() - started)


async def _workers(system: System, requests: list[list[str]], concurrency: int) -> tuple[list[float], float]:
    queue = list(reversed(requests))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            await _timed(system, queue.pop(), latencies)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def measure(system: System, plan: Plan) -> dict[str, object]:
    try:
        return await _measure(system, plan)
    finally:
        await system.close()


async def _measure(system: System, plan: Plan) -> dict[str, object]:
    await system.embed(plan.texts[: plan.batch])  # warm-up: sessions, connections, first batch
    await system.embed(plan.queries[:1])
    c1: list[float] = []
    for query in plan.queries:
        await _timed(system, [query], c1)
    c8, _ = await _workers(system, [[q] for q in plan.queries], plan.concurrency)
    requests = [plan.texts[i : i + plan.batch] for i in range(0, len(plan.texts), plan.batch)]
    _, seconds = await _workers(system, requests, plan.concurrency)
    return {
        "texts_per_s": round(len(plan.texts) / seconds, 2),
        "tokens_per_s": round(plan.tokens / seconds, 1),
        "latency_c1_ms": percentiles(c1),
        "latency_c8_ms": percentiles(c8),
    }


def run(plan: Plan) -> dict[str, object]:
    if plan.system == "perf_analyzer":
        return run_perf_analyzer(plan)
    system = SYSTEMS[plan.system](plan.spec, name=plan.system)
    system.start()
    try:
        with PeakRss(system.pids) as rss:
            result = run_loop(measure(system, plan))
        result["peak_rss_mb"] = rss.peak // 2**20
        gpu = getattr(system, "gpu_memory_mb", None)
        if gpu is not None and gpu() is not None:
            result["peak_gpu_mb"] = gpu()
        return result
    finally:
        system.stop()


def run_perf_analyzer(plan: Plan) -> dict[str, object]:
    """NVIDIA's perf_analyzer driving the Triton ensemble over gRPC with the same strings."""
    from .perf_analyzer import find_perf_analyzer, write_input_data
    from .perf_analyzer import run_perf_analyzer as perf

    if find_perf_analyzer() is None:
        raise RuntimeError("perf_analyzer is not installed: run bench/install_perf_analyzer.sh")
    triton = TritonSystem(plan.spec, name="perf_analyzer")
    triton.start()
    work = plan.spec.work_dir
    try:
        with PeakRss(triton.pids) as rss:
            singles = work / "pa-singles.json"
            write_input_data([[q] for q in plan.queries], singles)
            batches = work / "pa-batches.json"
            groups = [plan.texts[i : i + plan.batch] for i in range(0, len(plan.texts), plan.batch)]
            groups = [g for g in groups if len(g) == plan.batch] or groups[:1]  # perf_analyzer: equal batches
            batch = write_input_data(groups, batches)
            url, model = triton.options.grpc_url, plan.spec.model
            # fixed request counts (one window, no stability loop): bounded and comparable with the others
            timeout = 600.0
            c1 = perf(model, url, singles, concurrency=1, request_count=len(plan.queries), timeout_s=timeout)
            c8 = perf(model, url, singles, concurrency=plan.concurrency, request_count=len(plan.queries),
                      timeout_s=timeout)  # fmt: skip
            saturation = perf(model, url, batches, concurrency=plan.concurrency, batch_size=batch,
                              request_count=max(len(groups), plan.concurrency), timeout_s=timeout)  # fmt: skip
        texts_per_s = saturation.texts_per_s
        return {
            "texts_per_s": round(texts_per_s, 2),
            "tokens_per_s": round(texts_per_s * plan.tokens / len(plan.texts), 1),
            "latency_c1_ms": {"p50": c1.p50_ms, "p95": c1.p95_ms, "p99": c1.p99_ms},
            "latency_c8_ms": {"p50": c8.p50_ms, "p95": c8.p95_ms, "p99": c8.p99_ms},
            "peak_rss_mb": rss.peak // 2**20,
        }
    finally:
        triton.stop()


def main() -> None:
    plan = Plan.from_json(Path(sys.argv[1]))
    print(json.dumps(run(plan)))


if __name__ == "__main__":
    main()
