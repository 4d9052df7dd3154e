"""A single query's latency, paired: in-process onnxruntime, one Triton per repository, and the proxy, in turns.

`bge-triton bench` runs its systems one after another, so on a shared or busy machine each sees a different load
and a few milliseconds of difference drown in it. Here every system is started once and queried in rounds, one
16-token query (the bench's `short` queries) per system per round, in an order that rotates every round, so all
of them see the same load; the report gives each one's median and p90 and the paired differences (per round,
then the median), which is what the fixed cost of a request is.

    python -m bge_triton.bench.ab_latency --repository BEFORE --repository AFTER --model NAME \
        [--checkpoint DIR] [--rounds 200] [--threads 2] [--proxy] [--json PATH]

The in-process pipeline runs the first repository's graphs on the same strings the client library sends (the
passage instruction in front); `--proxy` adds the OpenAI proxy (base64, as the openai SDK asks; no vector cache)
in front of the last repository's Triton, called with the standard library's `http.client` on one kept-alive
connection, the leanest Python client (bench/http_load.py says what httpx would add). Each Triton uses
`--threads` onnxruntime threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bge_triton.model_facts import read_facts


def summary(samples: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per system: p10, median and p90 ms; against `baseline` (and the system before it in `samples`' order) the
    median of the per-round differences and the difference of the p10s."""
    out: dict[str, dict[str, float]] = {}
    names = list(samples)
    for i, name in enumerate(names):
        values = sorted(samples[name])
        row = quantile_row(values)  # p10: on a loaded machine, nearest to the unloaded figure
        others = [baseline] if name != baseline else []
        if i > 0 and names[i - 1] != baseline:
            others.append(names[i - 1])
        for other in others:
            diffs = sorted(_paired(samples[name], samples[other]))
            row[f"minus_{other}_p50_ms"] = round(statistics.median(diffs), 3)
            row[f"p10_minus_{other}_p10_ms"] = round(_quantile(values, 0.1) - _quantile(sorted(samples[other]), 0.1), 3)
        out[name] = row
    return out


def quantile_row(values: list[float]) -> dict[str, float]:
    """p10, median and p90 of `values` (ms, to the microsecond)."""
    ordered = sorted(values)
    return {
        "p10_ms": round(_quantile(ordered, 0.1), 3),
        "p50_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(_quantile(ordered, 0.9), 3),
    }


def report_out(report: dict[str, object], path: Path | None) -> None:
    """Print the report as JSON and, given a path, also write it there."""
    print(json.dumps(report, indent=2))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _paired(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def run(
    repositories: list[Path],
    model: str,
    *,
    rounds: int = 200,
    warmup: int = 10,
    threads: int = 2,
    proxy: bool = False,
) -> dict[str, object]:
    from bge_triton.client import EmbeddingClient, with_instruction
    from bge_triton.export.parity import OnnxPipeline
    from bge_triton.launcher import TritonOptions, TritonServer, free_port

    from .systems import _spawn, _wait
    from .workloads import make_texts

    first = repositories[0]
    facts = read_facts(first / model)
    tokenizer_json = first / f"{model}-tokenizer/1/tokenizer.json"
    queries = make_texts(tokenizer_json, "short", warmup + rounds, facts.max_tokens, seed=1)
    # The bare encoder at its quickest for a lone query: threads that never spin (in the paired runs of issue 19 its
    # p50 was lower and steadier so than with spinning inside a run, the served default), so Triton is compared with
    # the harder baseline.
    pipeline = OnnxPipeline(
        tokenizer_json, first / f"{model}-encoder/1/model.onnx", first / f"{model}-pooling/1/model.onnx", facts,
        threads=threads, spinning="off",
    )  # fmt: skip
    os.environ["BGE_TRITON_ORT_THREADS"] = str(threads)
    calls: dict[str, Callable[[str], object]] = {
        "onnxruntime": lambda q: pipeline.embed(with_instruction([q], facts, query=False))
    }
    servers, closers = [], []
    with tempfile.TemporaryDirectory(prefix="bge-ab-") as tmp:
        try:
            for i, repository in enumerate(repositories):
                options = TritonOptions(
                    repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
                )
                server = TritonServer(options, log_file=Path(tmp) / f"triton-{i}.log")
                servers.append(server)
                server.start()
                server.wait_ready(600)
                client = EmbeddingClient(options.grpc_url, model=model)
                closers.append(client.close)
                calls[f"triton[{i}]"] = lambda q, c=client: c.embed([q])
            if proxy:
                import http.client

                port = free_port()
                process = _spawn(
                    [sys.executable, "-m", "bge_triton", "serve-proxy", "--triton-url", options.http_url,
                     "--port", str(port), "--no-cache"],  # HTTP to Triton, as `bge-triton serve` wires it
                    Path(tmp) / "proxy.log",
                )  # fmt: skip
                closers.append(lambda: (process.terminate(), process.wait(30)))
                _wait(f"http://127.0.0.1:{port}/ready", process)
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                closers.insert(0, connection.close)

                def post(q: str) -> object:
                    body = json.dumps({"model": model, "input": [q], "encoding_format": "base64"})
                    connection.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    payload = response.read()
                    if response.status != 200:
                        raise RuntimeError(f"proxy answered {response.status}: {payload[:200]!r}")
                    return payload

                calls["proxy"] = post
            samples = _measure(calls, queries, warmup)
        finally:
            for close in closers:
                close()
            for server in servers:
                server.stop()
    return {
        "model": model,
        "repositories": [str(r) for r in repositories],
        "rounds": rounds,
        "threads": threads,
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "systems": summary(samples, "onnxruntime"),
    }


def _measure(calls: dict[str, Callable[[str], object]], queries: list[str], warmup: int) -> dict[str, list[float]]:
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r, query in enumerate(queries):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]  # the order rotates every round
            started = time.perf_counter()
            calls[name](query)
            if r >= warmup:
                samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, action="append", required=True, help="repeat to compare")
    parser.add_argument("--model", required=True, help="the served model name (the same in every repository)")
    parser.add_argument("--rounds", type=int, default=200, help="queries per system (after 10 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads, in-process and in Triton")
    parser.add_argument("--proxy", action="store_true", help="also the OpenAI proxy before the last Triton")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    report_out(run(args.repository, args.model, rounds=args.rounds, threads=args.threads, proxy=args.proxy), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
