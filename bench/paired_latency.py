"""The bench's side-by-side single-query run: every system up at once, queried in turns.

`bge-triton bench` measures each system in a process of its own, one after another; a millisecond of fixed cost
per request (issue 19) drowns in what a shared machine does between those runs. Here the systems are started
together in one process and asked for one 16-token query each per round, in an order that rotates every round,
so all see the same machine. Each is called through `embed_now` where it has one, from this thread: in-process
engines directly, Triton with the sync client over gRPC and (triton-http) over HTTP, HTTP servers with the
client library's blocking connection (bench/http_load.py), so the figures are the systems' and not the load
generator's. The report gives each one's p10/p50/p90 and the median of the per-round differences: each system
minus in-process onnxruntime, the proxy minus triton-http (its own share: it talks HTTP to Triton) and minus
triton, and triton-http minus triton (what HTTP instead of gRPC changes). The harness runs it with
OMP_WAIT_POLICY=PASSIVE: torch's spinning OpenMP threads would take the cores of whichever system comes next in a
round.

    python -m bge_triton.bench.paired_latency PLAN.json   (written by bench/harness.py; prints JSON last)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from .ab_latency import _paired, quantile_row  # the same quantiles and per-round differences as ab_latency
from .runner import Plan, run_loop
from .systems import SYSTEMS, System

BASELINE = "onnxruntime"
# Systems also compared with the Triton systems they stand in front of or next to: the proxy talks HTTP to Triton
# (its own share: minus triton-http), triton-http is Triton over the other protocol; both also minus triton (gRPC).
COMPARED_WITH = {"proxy": ("triton-http", "triton"), "triton-http": ("triton",)}
WARMUP_ROUNDS = 10


def differences(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per system: p10/p50/p90 ms and, paired round by round, the median difference to onnxruntime (and the
    proxy's and triton-http's to the Triton systems in COMPARED_WITH)."""
    out: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        row = quantile_row(values)
        for other in (BASELINE, *COMPARED_WITH.get(name, ())):
            if other != name and other in samples:
                row[f"minus_{other}_p50_ms"] = round(statistics.median(_paired(values, samples[other])), 3)
        out[name] = row
    return out


async def _rounds(systems: dict[str, System], queries: list[str]) -> dict[str, list[float]]:
    names = list(systems)
    samples: dict[str, list[float]] = {name: [] for name in names}
    try:
        for r, query in enumerate(queries):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]  # the order rotates every round
                system = systems[name]
                embed_now = getattr(system, "embed_now", None)  # in-process: the call itself, no thread hop
                started = time.perf_counter()
                if embed_now is not None:
                    embed_now([query])
                else:
                    await system.embed([query])
                if r >= WARMUP_ROUNDS:
                    samples[name].append((time.perf_counter() - started) * 1000)
    finally:
        for system in systems.values():
            await system.close()
    return samples


def run(plan: Plan, names: list[str], rounds: int) -> dict[str, object]:
    """`rounds` paired rounds over the plan's queries (repeated as needed); systems that fail to start are
    reported with their error and left out."""
    systems: dict[str, System] = {}
    errors: dict[str, str] = {}
    try:
        for name in names:
            system = SYSTEMS[name](plan.spec, name=name)
            try:
                system.start()
            except Exception as exc:  # reported like the per-system runs report theirs
                errors[name] = f"{type(exc).__name__}: {exc}"
                system.stop()
                continue
            systems[name] = system
        queries = [plan.queries[i % len(plan.queries)] for i in range(WARMUP_ROUNDS + rounds)]
        samples = run_loop(_rounds(systems, queries)) if systems else {}
    finally:
        for system in systems.values():
            system.stop()
    return {"rounds": rounds, "systems": differences(samples), "errors": errors}


def main() -> None:
    plan_path, rounds, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    print(json.dumps(run(Plan.from_json(plan_path), names, rounds)))


if __name__ == "__main__":
    main()
