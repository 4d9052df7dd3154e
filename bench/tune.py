"""Triton tuning sweep: encoder instances x intra-op threads, dynamic-batching delay and sizes.

    python -m bge_triton.bench.tune --checkpoint CKPT --repository REPO [--workload sentence]

Each variant is the same exported ONNX written into its own repository with other batching
options, measured with the harness's `triton` system; prints a table and writes
`bench/results/<date>-<host>-<model>-tuning.json`.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

from bge_triton.export.model_configs import BatchingOptions
from bge_triton.export.onnx_export import encoder_input_names
from bge_triton.export.repository import write_repository
from bge_triton.model_facts import read_facts

from .harness import RESULTS_DIR, BenchOptions, run_bench

# (label, batching options, ORT intra-op threads per encoder instance)
VARIANTS: tuple[tuple[str, BatchingOptions, int], ...] = (
    ("1 instance x 2 threads, delay 2 ms, preferred 8/16/32", BatchingOptions(), 2),
    ("2 instances x 1 thread, delay 2 ms", BatchingOptions(encoder_instances=2), 1),
    ("1 instance x 2 threads, delay 10 ms", BatchingOptions(max_queue_delay_us=10_000), 2),
    ("1 instance x 2 threads, delay 0 (no waiting)", BatchingOptions(max_queue_delay_us=0), 2),
    ("1 instance x 2 threads, preferred 32/64", BatchingOptions(preferred_batch_sizes=(32, 64)), 2),
)


def sweep(checkpoint: Path, repository: Path, model: str, workload: str, texts: int, queries: int) -> list[dict]:
    facts = read_facts(repository / model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bge-tune-") as tmp:
        for i, (label, opts, threads) in enumerate(VARIANTS):
            variant = Path(tmp) / f"v{i}"
            write_repository(
                variant, facts,
                tokenizer_json=repository / f"{model}-tokenizer/1/tokenizer.json",
                encoder_onnx=repository / f"{model}-encoder/1/model.onnx",
                pooling_onnx=repository / f"{model}-pooling/1/model.onnx",
                input_names=encoder_input_names(facts),
                opts=opts,
            )  # fmt: skip
            report = run_bench(BenchOptions(
                checkpoint=checkpoint, repository=variant, model=model, workload=workload, systems=("triton",),
                threads=threads, texts=texts, queries=queries, out_dir=Path(tmp) / "results",
            ))  # fmt: skip
            result = report["systems"]["triton"]  # type: ignore[index]
            rows.append({"variant": label, **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workload", default="sentence")
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--queries", type=int, default=32)
    args = parser.parse_args()
    rows = sweep(args.checkpoint, args.repository, args.model, args.workload, args.texts, args.queries)
    print("| variant | texts/s | c1 p50 | c8 p50 | c8 p99 |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | error: {r['error']} | | | |")
            continue
        c1, c8 = r["latency_c1_ms"], r["latency_c8_ms"]
        cells = [r["variant"], f"{r['texts_per_s']:.1f}", f"{c1['p50']:.0f} ms", f"{c8['p50']:.0f} ms"]
        print("| " + " | ".join([*cells, f"{c8['p99']:.0f} ms"]) + " |")
    out = RESULTS_DIR / f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}-{args.model}-tuning.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workload": args.workload, "variants": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
