"""How much of Triton-over-gRPC's extra time is Python's gRPC client, and how much Triton's gRPC frontend.

A single query reaches Triton 0.5-1 ms later over gRPC than over HTTP from this project's client library (issue
19, docs/benchmarks.md). Two measurements on one Triton split that:

1. The client library in worker processes of its own, one per variant, asked in rotating turns for the same
   16-token query (paired, as bench/ab_latency.py): over HTTP, over gRPC as shipped, and over gRPC with grpcio's
   own default (`GRPC_EXPERIMENTS` set empty: bge_triton/grpc_runtime.py then leaves grpc's EventEngine client
   in place; the variable is read once per process, hence a process per variant). Each worker reports its
   call's wall time and its own CPU time.
2. perf_analyzer (NVIDIA's C++ client, if bench/install_perf_analyzer.sh installed it) at concurrency 1 over
   gRPC and over HTTP, alternating: Triton's two frontends without Python on the client side.

    python -m bge_triton.bench.grpc_client_share --repository REPO --model NAME [--rounds 300] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ab_latency import _paired, quantile_row, report_out

BASELINE = "grpc"
WARMUP_ROUNDS = 10


@dataclass(frozen=True)
class Variant:
    """One worker process: the client library over `protocol`, with `environment` on top of ours."""

    protocol: str
    environment: Mapping[str, str] = field(default_factory=dict)


VARIANTS = {
    "grpc": Variant("grpc"),  # as shipped: the calling thread reads its answer (grpc_runtime.py)
    # grpcio's default: its EventEngine client reads an answer on a poller thread and hands it on to the caller
    "grpc-event-engine-client": Variant("grpc", {"GRPC_EXPERIMENTS": ""}),
    "http": Variant("http"),
}


def summary(walls: dict[str, list[float]], cpus: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: p10/p50/p90 wall ms, mean CPU ms per call, and the median per-round difference to gRPC."""
    out: dict[str, dict[str, float]] = {}
    for name, values in walls.items():
        row = quantile_row(values) | {"cpu_ms_per_call": round(statistics.fmean(cpus[name]), 3)}
        if name != BASELINE and BASELINE in walls:
            row[f"minus_{BASELINE}_p50_ms"] = round(statistics.median(_paired(values, walls[BASELINE])), 3)
        out[name] = row
    return out


def worker(url: str, protocol: str, model: str) -> int:
    """One text per stdin line, embedded with the client library; `wall_ms cpu_ms` per line on stdout."""
    from bge_triton.client import EmbeddingClient

    client = EmbeddingClient(url, protocol, model=model)  # type: ignore[arg-type]
    try:
        for line in sys.stdin:
            text = line.rstrip("\n")
            cpu, started = time.process_time(), time.perf_counter()
            client.embed([text])
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            sys.stdout.write(f"{wall * 1000:.4f} {cpu * 1000:.4f}\n")
            sys.stdout.flush()
    finally:
        client.close()
    return 0


def _workers(urls: Mapping[str, str], model: str) -> dict[str, subprocess.Popen[str]]:
    workers = {}
    for name, variant in VARIANTS.items():
        environment = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"} | dict(variant.environment)
        command = [sys.executable, "-m", "bge_triton.bench.grpc_client_share", "--worker", urls[variant.protocol],
                   variant.protocol, model]  # fmt: skip
        workers[name] = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment
        )
    return workers


def _ask(process: subprocess.Popen[str], text: str) -> tuple[float, float]:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(text.replace("\n", " ") + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {process.args} ended (exit {process.wait()})")
    wall, cpu = line.split()
    return float(wall), float(cpu)


def measure_clients(urls: Mapping[str, str], model: str, queries: Sequence[str]) -> dict[str, dict[str, float]]:
    workers = _workers(urls, model)
    names = list(workers)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    try:
        for r, query in enumerate(queries):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]  # the order rotates every round
                wall, cpu = _ask(workers[name], query)
                if r >= WARMUP_ROUNDS:
                    walls[name].append(wall)
                    cpus[name].append(cpu)
    finally:
        for process in workers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(30)
    return summary(walls, cpus)


def measure_perf_analyzer(
    addresses: Mapping[str, str], model: str, queries: Sequence[str], tmp: Path, *, requests: int, repeats: int = 3
) -> dict[str, object]:
    """perf_analyzer at concurrency 1 over each protocol in turn, `repeats` times: per run the p50 and the mean
    time outside Triton's models (client, network, frontend: the mean latency less queue and compute), ms. Runs
    are windows one after another, not paired rounds, so the encoder's drift moves the p50s; the outside share
    leaves the encoder out."""
    from .perf_analyzer import find_perf_analyzer, run_perf_analyzer, write_input_data

    if find_perf_analyzer() is None:
        return {"skipped": "perf_analyzer not installed (bench/install_perf_analyzer.sh)"}
    input_json = tmp / "queries.json"
    write_input_data([[q] for q in queries[:64]], input_json)
    p50s: dict[str, list[float]] = {protocol: [] for protocol in addresses}
    outside: dict[str, list[float]] = {protocol: [] for protocol in addresses}
    for _ in range(repeats):
        for protocol, address in addresses.items():
            result = run_perf_analyzer(
                model, address, input_json, request_count=requests, timeout_s=600, protocol=protocol
            )
            p50s[protocol].append(round(result.p50_ms, 3))
            outside[protocol].append(round(result.avg_ms - result.server_avg_ms, 3))
    return {
        "p50_ms": p50s,
        "outside_models_ms": outside,
        "grpc_minus_http_p50_ms": [round(g - h, 3) for g, h in zip(p50s["grpc"], p50s["http"], strict=True)],
        "grpc_minus_http_outside_ms": [round(g - h, 3) for g, h in zip(outside["grpc"], outside["http"], strict=True)],
    }


def run(repository: Path, model: str, *, rounds: int, perf_analyzer_requests: int) -> dict[str, object]:
    from bge_triton.launcher import TritonOptions, TritonServer, free_port
    from bge_triton.model_facts import read_facts

    from .workloads import make_texts

    facts = read_facts(repository / model)
    tokenizer_json = repository / f"{model}-tokenizer/1/tokenizer.json"
    queries = make_texts(tokenizer_json, "short", WARMUP_ROUNDS + rounds, facts.max_tokens, seed=1)
    options = TritonOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with tempfile.TemporaryDirectory(prefix="bge-grpc-share-") as tmp:
        server = TritonServer(options, log_file=Path(tmp) / "triton.log")
        server.start()
        try:
            server.wait_ready(600)
            clients = measure_clients({"grpc": options.grpc_url, "http": options.http_url}, model, queries)
            addresses = {"grpc": options.grpc_url, "http": f"{options.host}:{options.http_port}"}
            native = measure_perf_analyzer(addresses, model, queries, Path(tmp), requests=perf_analyzer_requests)
        finally:
            server.stop()
    return {
        "model": model,
        "repository": str(repository),
        "rounds": rounds,
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "client_library": clients,
        "perf_analyzer_c1": native,
    }


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--worker"]:
        url, protocol, model = arguments[1:4]
        return worker(url, protocol, model)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True, help="the served ensemble's name")
    parser.add_argument("--rounds", type=int, default=300, help="queries per variant (after 10 warm-up rounds)")
    parser.add_argument("--perf-analyzer-requests", type=int, default=400, help="requests per perf_analyzer run")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(arguments)
    report = run(args.repository, args.model, rounds=args.rounds, perf_analyzer_requests=args.perf_analyzer_requests)
    report_out(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
