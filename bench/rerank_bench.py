"""Rerankers: pairs/s through Triton vs in-process, and a reranking quality check through the live proxy.

`python -m bge_triton.bench.rerank_bench throughput --checkpoint DIR [--repository DIR] [--threads 2]`
    Each request is one query of the shipped Chinese retrieval set (`zh-retrieval-bge-finetune.jsonl`) with its
    positive and hard negatives (11 documents): through Triton (the exported reranker, our async gRPC client,
    `--concurrency` requests in flight, onnxruntime limited to `--threads`) and in-process through
    sentence-transformers' `CrossEncoder.predict` (torch limited to `--threads`, one request at a time: it holds the
    cores). Reports pairs/s and per-request p50/p95/p99, and the largest score difference between the two (a
    benchmark of wrong scores is no benchmark). `--make-model tiny|full` builds a random-init bge-reranker-v2-m3
    (2 layers x 64, or the full 24 x 1024) instead of `--checkpoint`. infinity-emb's rerank is not measured here.

`python -m bge_triton.bench.rerank_bench quality --url http://127.0.0.1:8080 [--reranker R] [--embedder E]`
    For each query, its positive and negatives are ranked by the served reranker (`/v1/rerank`) and by the
    embedder alone (cosine of `/v1/embeddings` vectors, the query with the model's query instruction); MRR@10 and
    recall@1 of the positive for each. With random-init weights the numbers only prove the plumbing.

Both write `bench/results/<date>-<host>-rerank-<kind>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bge_triton.evaluation.metrics import first_hit_ranks, mrr_at_k, recall_at_k
from bge_triton.package_data import eval_data_dir

from .harness import RESULTS_DIR, _cpu_name
from .runner import percentiles

RETRIEVAL_FILE = "zh-retrieval-bge-finetune.jsonl"


@dataclass(frozen=True)
class Candidates:
    query: str
    documents: list[str]  # the positives first, then the negatives
    positives: frozenset[int]


def load_candidates(limit: int, path: Path | None = None) -> list[Candidates]:
    """The first `limit` queries of the shipped retrieval set, each with its positives and negatives."""
    out = []
    with (path or eval_data_dir() / RETRIEVAL_FILE).open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            pos, neg = [str(p) for p in row["pos"]], [str(n) for n in row["neg"]]
            out.append(Candidates(str(row["query"]), pos + neg, frozenset(range(len(pos)))))
            if len(out) >= limit:
                break
    return out


# -- throughput -------------------------------------------------------------------------------------------------
async def _triton_scores(url: str, model: str, requests: list[Candidates], concurrency: int) -> tuple[list, list]:
    from bge_triton.client import AsyncRerankClient

    scores: list[np.ndarray] = [np.zeros(0)] * len(requests)
    latencies: list[float] = []
    queue = list(enumerate(requests))
    async with AsyncRerankClient(url, model=model, max_concurrency=64, timeout_s=900) as client:
        await client.scores(requests[0].query, requests[0].documents)  # warm-up

        async def worker() -> None:
            while queue:
                i, item = queue.pop(0)
                started = time.perf_counter()
                scores[i] = (await client.scores(item.query, item.documents)).scores
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return scores, latencies


def measure_triton(repository: Path, model: str, requests: list[Candidates], *, threads: int, concurrency: int,
                   work_dir: Path) -> tuple[dict[str, Any], list[np.ndarray]]:  # fmt: skip
    from bge_triton.launcher import TritonOptions, TritonServer, free_port

    os.environ["BGE_TRITON_ORT_THREADS"] = str(threads)  # the ONNX runner's intra-op threads (bench/systems.py)
    options = TritonOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(options, log_file=work_dir / "triton-rerank.log"):
        started = time.perf_counter()
        scores, latencies = asyncio.run(_triton_scores(options.grpc_url, model, requests, concurrency))
        seconds = time.perf_counter() - started
    return _summary(requests, latencies, seconds, concurrency=concurrency), scores


def measure_cross_encoder(checkpoint: Path, requests: list[Candidates], *,
                          threads: int) -> tuple[dict[str, Any], list[np.ndarray]]:  # fmt: skip
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    model = CrossEncoder(str(checkpoint), device="cpu")
    identity = torch.nn.Identity()
    model.predict([(requests[0].query, d) for d in requests[0].documents], activation_fn=identity)  # warm-up
    scores, latencies = [], []
    started = time.perf_counter()
    for item in requests:
        t = time.perf_counter()
        pairs = [(item.query, d) for d in item.documents]
        scores.append(np.asarray(model.predict(pairs, activation_fn=identity, batch_size=32)))
        latencies.append(time.perf_counter() - t)
    return _summary(requests, latencies, time.perf_counter() - started, concurrency=1), scores


async def _infinity_scores(url: str, model: str, requests: list[Candidates], concurrency: int) -> tuple[list, list]:

    scores: list[np.ndarray] = [np.zeros(0)] * len(requests)
    latencies: list[float] = []
    queue = list(enumerate(requests))
    async with httpx.AsyncClient(timeout=900) as http:

        async def ranked(item: Candidates) -> np.ndarray:
            body = {"model": model, "query": item.query, "documents": item.documents, "raw_scores": True}
            response = await http.post(f"{url}/rerank", json=body)
            response.raise_for_status()
            out = np.zeros(len(item.documents))
            for row in response.json()["results"]:
                out[int(row["index"])] = float(row["relevance_score"])
            return out

        await ranked(requests[0])  # warm-up

        async def worker() -> None:
            while queue:
                i, item = queue.pop(0)
                started = time.perf_counter()
                scores[i] = await ranked(item)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return scores, latencies


def measure_infinity(checkpoint: Path, requests: list[Candidates], *, threads: int, concurrency: int,
                     work_dir: Path) -> tuple[dict[str, Any], list[np.ndarray]]:  # fmt: skip
    """infinity-emb's `/rerank` (torch engine, its own venv: bench/install_infinity.sh), raw scores (logits)."""
    from bge_triton.bench.systems import INFINITY_BIN, _spawn, _wait
    from bge_triton.launcher import free_port

    if not INFINITY_BIN.is_file():
        raise RuntimeError(f"{INFINITY_BIN} missing: run bench/install_infinity.sh")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}  # fmt: skip
    process = _spawn(
        [str(INFINITY_BIN), "v2", "--model-id", str(checkpoint), "--served-model-name", "reranker", "--engine",
         "torch", "--device", "cpu", "--port", str(port), "--host", "127.0.0.1", "--batch-size", "32",
         "--no-model-warmup"],
        work_dir / "infinity-rerank.log", env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/health", process, timeout_s=600)
        started = time.perf_counter()
        scores, latencies = asyncio.run(_infinity_scores(url, "reranker", requests, concurrency))
        seconds = time.perf_counter() - started
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    return _summary(requests, latencies, seconds, concurrency=concurrency), scores


def _summary(requests: list[Candidates], latencies: list[float], seconds: float, *, concurrency: int) -> dict:
    pairs = sum(len(r.documents) for r in requests)
    return {"requests": len(requests), "pairs": pairs, "seconds": round(seconds, 3),
            "pairs_per_s": round(pairs / seconds, 1), "latency_ms": percentiles(latencies),
            "concurrency": concurrency}  # fmt: skip


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    from bge_triton.export.exporter import export_model
    from bge_triton.model_facts import read_facts

    work = Path(tempfile.mkdtemp(prefix="bge-triton-rerank-bench-"))
    checkpoint = args.checkpoint or _make_model(args.make_model, work)
    repository = args.repository or work / "repository"
    model = args.model
    if model is None or not (repository / model).is_dir():
        model = export_model(str(checkpoint), repository, name=model).facts.name
    facts = read_facts(repository / model)
    requests = load_candidates(args.queries)
    triton, triton_scores = measure_triton(repository, model, requests, threads=args.threads,
                                           concurrency=args.concurrency, work_dir=work)  # fmt: skip
    in_process, ce_scores = measure_cross_encoder(checkpoint, requests, threads=args.threads)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(triton_scores, ce_scores, strict=True))
    systems: dict[str, Any] = {"triton": triton, "cross-encoder": in_process}
    report = {
        "kind": "throughput", "model": model, "checkpoint": str(checkpoint), "layers_hidden": _shape(checkpoint),
        "precision": facts.precision, "threads": args.threads, "cpu": _cpu_name(), "cores": os.cpu_count(),
        "systems": systems,
        "triton_vs_cross_encoder": round(triton["pairs_per_s"] / in_process["pairs_per_s"], 2),
        "max_score_diff": diff,
    }  # fmt: skip
    if getattr(args, "infinity", False):
        try:
            infinity, inf_scores = measure_infinity(checkpoint, requests, threads=args.threads,
                                                    concurrency=args.concurrency, work_dir=work)  # fmt: skip
        except Exception as exc:  # a peer that fails is reported, the others still count
            systems["infinity"] = {"error": repr(exc)}
        else:
            systems["infinity"] = infinity
            report["triton_vs_infinity"] = round(triton["pairs_per_s"] / infinity["pairs_per_s"], 2)
            report["max_score_diff_infinity"] = max(
                float(np.abs(a - b).max()) for a, b in zip(triton_scores, inf_scores, strict=True)
            )
    return report


def _make_model(kind: str | None, work: Path) -> Path:
    from bge_triton.export.rerank_checkpoint import make_rerank_checkpoint

    if kind == "tiny":
        return make_rerank_checkpoint(work / "bge-reranker-tiny", num_layers=2, hidden_size=64)
    if kind == "full":
        return make_rerank_checkpoint(work / "bge-reranker-v2-m3-random")
    raise SystemExit("pass --checkpoint DIR or --make-model tiny|full")


def _shape(checkpoint: Path) -> str:
    config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    return f"{config.get('num_hidden_layers')} x {config.get('hidden_size')}"


# -- quality ----------------------------------------------------------------------------------------------------
async def rank_with_service(url: str, items: list[Candidates], *, reranker: str | None,
                            embedder: str | None) -> dict[str, list[list[int]]]:  # fmt: skip
    """Each query's documents ranked best first: by `/v1/rerank`, and (with `embedder`) by the embedder's cosine."""
    out: dict[str, list[list[int]]] = {"reranker": []}
    if embedder is not None:
        out["embedder"] = []
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=300) as http:
        for item in items:
            body: dict[str, Any] = {"query": item.query, "documents": item.documents}
            if reranker is not None:
                body["model"] = reranker
            answer = await http.post("/v1/rerank", json=body)
            answer.raise_for_status()
            out["reranker"].append([r["index"] for r in answer.json()["results"]])
            if embedder is not None:
                q = await http.post("/v1/embeddings", json={"model": embedder, "input": [item.query],
                                                            "input_type": "query"})  # fmt: skip
                d = await http.post("/v1/embeddings", json={"model": embedder, "input": item.documents})
                q.raise_for_status()
                d.raise_for_status()
                qv = np.array(q.json()["data"][0]["embedding"])
                dv = np.array([e["embedding"] for e in d.json()["data"]])
                cos = dv @ qv / np.maximum(np.linalg.norm(dv, axis=1) * np.linalg.norm(qv), 1e-12)
                out["embedder"].append(sorted(range(len(cos)), key=lambda i: (-float(cos[i]), i)))
    return out


def quality_metrics(rankings: list[list[int]], items: list[Candidates]) -> dict[str, float]:
    ranks = first_hit_ranks(rankings, [set(item.positives) for item in items])
    return {"mrr@10": round(mrr_at_k(ranks, 10), 4), "recall@1": round(recall_at_k(ranks, 1), 4)}


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    items = load_candidates(args.queries)
    rankings = asyncio.run(rank_with_service(args.url, items, reranker=args.reranker, embedder=args.embedder))
    return {
        "kind": "quality", "url": args.url, "reranker": args.reranker, "embedder": args.embedder,
        "queries": len(items), "documents_per_query": round(float(np.mean([len(i.documents) for i in items])), 1),
        "results": {system: quality_metrics(ranked, items) for system, ranked in rankings.items()},
        "note": "random-init weights prove the plumbing only; real checkpoints give real numbers",
    }  # fmt: skip


# -- command line -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bge_triton.bench.rerank_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput", help="pairs/s: Triton vs in-process CrossEncoder")
    t.add_argument("--checkpoint", type=Path, default=None, help="a cross-encoder checkpoint directory")
    t.add_argument("--make-model", choices=("tiny", "full"), default=None, help="a random-init bge-reranker-v2-m3")
    t.add_argument("--repository", type=Path, default=None, help="model repository (default: a fresh export)")
    t.add_argument("--model", default=None, help="the reranker's served name in --repository")
    t.add_argument("--queries", type=int, default=50, help="requests (one query + 11 documents each)")
    t.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads each system may use")
    t.add_argument("--concurrency", type=int, default=4, help="Triton requests in flight")
    t.add_argument("--infinity", action="store_true", help="also infinity-emb's /rerank (bench/install_infinity.sh)")
    q = sub.add_parser("quality", help="MRR@10 of the served reranker vs the embedder alone")
    q.add_argument("--url", default="http://127.0.0.1:8080", help="the proxy")
    q.add_argument("--reranker", default=None, help="served reranker (default: the only one)")
    q.add_argument("--embedder", default=None, help="served embedding model to compare with (default: none)")
    q.add_argument("--queries", type=int, default=200, help="queries of the retrieval set")
    for p in (t, q):
        p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    write_report(run_throughput(args) if args.command == "throughput" else run_quality(args), args.out)


def write_report(report: dict[str, Any], out: Path) -> Path:
    """The report as JSON under `out` (printed too), and for a throughput run a table of the systems."""
    out.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname())
    path = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{host}-rerank-{report['kind']}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if report["kind"] == "throughput":
        print(f"\n| system | pairs/s | p50 ms | p99 ms |  ({report['layers_hidden']}, {report['threads']} threads)")
        print("|---|---|---|---|")
        for name, row in report["systems"].items():
            if "error" in row:
                print(f"| {name} | error: {row['error']} | | |")
            else:
                lat = row["latency_ms"]
                print(f"| {name} | {row['pairs_per_s']} | {lat['p50']} | {lat['p99']} |")
    print(f"wrote {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
