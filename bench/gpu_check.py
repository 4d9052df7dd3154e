"""The prepared GPU check (issue 15): one run measures the torch path on one GPU, side by side.

Builds bge-large-zh-v1.5's exact shape with random weights (from the config the package ships), exports it with
the torch engine on CUDA (FP16 + SDPA, parity against the FP32 reference), and runs `bge-triton bench` with four
systems at 128 and 512 tokens: sentence-transformers FP16 in-process (what users pick instead), the torch engine
in-process (the limit of this path), the Triton ensemble over gRPC, and the OpenAI proxy. Each gives saturation
texts/s and tokens/s, single 16-token query latency p50/p99, peak RSS and (in-process) peak GPU memory. Writes
`gpu-check.json` (everything, FP16 parity included), the bench JSONs and `nvidia-smi.txt` into `--out`.

`--dry-run` runs every step on the CPU with the same config scaled down (2 layers, hidden 128), a few texts and the
128-token workload only: the test suite runs it so the script cannot rot. On the GPU host `bench/gpu/run.sh`
prepares the environment (the carried tritonserver and wheels) and calls this module.

    python -m bge_triton.bench.gpu_check --out DIR [--dry-run] [--texts 2048] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEMS = ("sentence-transformers", "torch", "triton", "proxy")
WORKLOADS = ("medium", "full")  # 128 and 512 tokens
MODEL = "bge-large-zh-v1.5"


def build_checkpoint(out: Path, *, dry_run: bool) -> Path:
    """bge-large-zh-v1.5's shape with random weights; scaled down to 2 layers x hidden 128 for the dry run."""
    import json as _json

    from bge_triton.export.bench_model import make_bench_model
    from bge_triton.package_data import model_config_dir

    source = model_config_dir(MODEL)
    if not dry_run:
        return make_bench_model(source, out, seed=0)
    import shutil

    scaled = out.parent / "config-scaled"
    shutil.copytree(source, scaled, dirs_exist_ok=True)
    config = _json.loads((scaled / "config.json").read_text())
    config.update(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=256)
    (scaled / "config.json").write_text(_json.dumps(config, indent=2))
    return make_bench_model(scaled, out, seed=0)


def nvidia_smi() -> str:
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi not available: {exc}"


def run_check(out: Path, work: Path, *, dry_run: bool, texts: int, queries: int, batch: int, concurrency: int) -> dict:
    """Everything the check builds (the checkpoint: 1.3 GB at full size, the repository) goes to `work`; only
    results go to `out`."""
    from bge_triton.bench.harness import BenchOptions, run_bench
    from bge_triton.export.exporter import export_model

    device = "cpu" if dry_run else "cuda"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checkpoint = build_checkpoint(work / MODEL, dry_run=dry_run)
    repository = work / "repository"
    exported = export_model(str(checkpoint), repository, name=MODEL, engine="torch", device=device)
    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "dry_run": dry_run,
        "device": device,
        "model": MODEL + (" (scaled down: 2 layers, hidden 128)" if dry_run else " shape, random weights"),
        "parity": json.loads(exported.parity.to_json()),
        "export_s": round(exported.seconds, 1),
        "workloads": {},
    }
    for workload in WORKLOADS[:1] if dry_run else WORKLOADS:
        bench = run_bench(
            BenchOptions(
                checkpoint=checkpoint, repository=repository, model=MODEL, workload=workload, systems=SYSTEMS,
                texts=texts, queries=queries, batch=batch, concurrency=concurrency, out_dir=out, device=device,
            )
        )  # fmt: skip
        report["workloads"][workload] = {  # type: ignore[index]
            "mean_tokens_per_text": bench["mean_tokens_per_text"],
            "systems": bench["systems"],
            "ratios": bench["ratios"],
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "nvidia-smi.txt").write_text(nvidia_smi())
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-check.json, bench JSONs, nvidia-smi")
    parser.add_argument("--work", type=Path, default=None, help="folder for the checkpoint and repository (temp)")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with a scaled-down model")
    parser.add_argument("--texts", type=int, default=None, help="saturation texts per system (default 4096; dry 16)")
    parser.add_argument("--queries", type=int, default=None, help="single-query latency runs (default 200; dry 4)")
    parser.add_argument("--batch", type=int, default=None, help="texts per request at saturation (default 64; dry 8)")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="requests in flight at saturation (default 8; dry 2)"
    )
    args = parser.parse_args(argv)
    texts = args.texts or (16 if args.dry_run else 4096)
    queries = args.queries or (4 if args.dry_run else 200)
    work = args.work or Path(tempfile.mkdtemp(prefix="bge-gpu-check-"))
    report = run_check(
        args.out,
        work,
        dry_run=args.dry_run,
        texts=texts,
        queries=queries,
        batch=args.batch or (8 if args.dry_run else 64),
        concurrency=args.concurrency or (2 if args.dry_run else 8),
    )
    print(json.dumps({k: v for k, v in report.items() if k != "workloads"}, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
