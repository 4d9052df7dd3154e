"""`bge-triton bench`: every system on the same model, inputs, machine and thread budget.

Prints a table and writes `bench/results/<date>-<host>-<model>-<workload>.json`.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bge_triton.model_facts import read_facts

ALL_SYSTEMS: tuple[str, ...] = ("onnxruntime", "triton", "perf_analyzer", "proxy", "sentence-transformers", "infinity")
# Also measurable, not in the default set: "torch" (the torch engine in-process; needs the checkpoint).
EXTRA_SYSTEMS: tuple[str, ...] = ("torch", "triton-http")
# Systems the side-by-side single-query run (paired_latency.py) starts together: all but perf_analyzer
PAIRED_SYSTEMS: tuple[str, ...] = (
    "onnxruntime", "triton", "triton-http", "proxy", "sentence-transformers", "infinity", "torch"
)  # fmt: skip
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class BenchOptions:
    checkpoint: Path
    repository: Path
    model: str
    workload: str = "sentence"
    systems: tuple[str, ...] = ALL_SYSTEMS
    threads: int = 2
    texts: int = 256  # saturation texts
    queries: int = 40  # single-text requests for the latency runs
    batch: int = 16
    concurrency: int = 8
    out_dir: Path = RESULTS_DIR
    timeout_s: float = 1800
    device: str = "cpu"  # cuda: sentence-transformers and the torch engine run FP16 on the GPU
    paired_rounds: int = 200  # the side-by-side single-query run (paired_latency.py); 0: none


def run_bench(opts: BenchOptions) -> dict[str, object]:
    # Imported here: `bge-triton --help` and the proxy image (no `tokenizers`) import this module for ALL_SYSTEMS.
    from bge_triton.triton_models.tokenizer import TextTokenizer

    from .workloads import make_texts

    facts = read_facts(opts.repository / opts.model)
    tokenizer_json = opts.repository / f"{opts.model}-tokenizer/1/tokenizer.json"
    texts = make_texts(tokenizer_json, opts.workload, opts.texts, facts.max_tokens, seed=0)
    queries = make_texts(tokenizer_json, "short", opts.queries, facts.max_tokens, seed=1)
    counts = TextTokenizer(tokenizer_json, facts.max_tokens, facts.pad_token_id).encode(texts).token_count
    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "model": opts.model,
        "checkpoint": str(opts.checkpoint),
        "workload": opts.workload,
        "mean_tokens_per_text": round(float(counts.mean()), 1),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "systems": {},
    }
    systems: dict[str, dict[str, object]] = report["systems"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="bge-bench-") as tmp:
        work = Path(tmp)
        for name in opts.systems:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            plan = {
                "system": name,
                "spec": {"checkpoint": str(opts.checkpoint), "repository": str(opts.repository), "model": opts.model,
                         "threads": opts.threads, "work_dir": str(work), "device": opts.device},
                "texts": texts, "tokens": int(counts.sum()), "queries": queries,
                "batch": opts.batch, "concurrency": opts.concurrency,
            }  # fmt: skip
            plan_path = work / f"plan-{name}.json"
            plan_path.write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
            systems[name] = _run_system(plan_path, opts.timeout_s)
        paired = [name for name in opts.systems if name in PAIRED_SYSTEMS]
        if "triton" in paired and "triton-http" not in paired:  # both of Triton's protocols, side by side
            paired.insert(paired.index("triton") + 1, "triton-http")
        if opts.paired_rounds > 0 and len(paired) > 1:
            print(f"[bench] side by side: {', '.join(paired)} ...", file=sys.stderr, flush=True)
            plan_path = work / "plan-paired.json"
            plan_path.write_text(json.dumps({**plan, "system": "paired"}, ensure_ascii=False), encoding="utf-8")
            args = [str(opts.paired_rounds), ",".join(paired)]
            # torch's OpenMP threads spin for a while after each call: in one process with the others, that took the
            # cores of whichever system came next in the round (in-process onnxruntime read 2 ms slower than Triton)
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            report["paired_c1"] = _run_system(plan_path, opts.timeout_s, "paired_latency", args, env)
    report["ratios"] = _ratios(systems)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    out = opts.out_dir / f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}-{opts.model}-{opts.workload}.json"
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report["path"] = str(out)
    print(format_table(report))
    print(f"wrote {out}")
    return report


def _run_system(
    plan_path: Path,
    timeout_s: float,
    module: str = "runner",
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    cmd = [sys.executable, "-m", f"bge_triton.bench.{module}", str(plan_path), *(args or [])]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratios(systems: dict[str, dict[str, object]]) -> dict[str, float]:
    def tps(name: str) -> float | None:
        value = systems.get(name, {}).get("texts_per_s")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    pairs = {
        "triton_vs_onnxruntime": ("triton", "onnxruntime"),
        "proxy_vs_onnxruntime": ("proxy", "onnxruntime"),
        "triton_vs_sentence_transformers": ("triton", "sentence-transformers"),
        "triton_vs_infinity": ("triton", "infinity"),
        "triton_vs_torch": ("triton", "torch"),
        "proxy_vs_torch": ("proxy", "torch"),
        "proxy_vs_infinity": ("proxy", "infinity"),
    }
    out = {}
    for key, (a, b) in pairs.items():
        ta, tb = tps(a), tps(b)
        if ta and tb:
            out[key] = round(ta / tb, 2)
    return out


def format_table(report: dict[str, object]) -> str:
    head = (f"{report['model']} · workload {report['workload']} (~{report['mean_tokens_per_text']} tokens/text) · "
            f"{report['cores']} cores · {report['cpu']}")  # fmt: skip
    cols = ["system", "texts/s", "tokens/s", "c1 p50", "c1 p95", "c1 p99", "c8 p50", "c8 p95", "c8 p99", "peak RSS"]
    rows = [cols]
    for name, r in report["systems"].items():  # type: ignore[union-attr]
        if "error" in r:
            rows.append([name, f"error: {r['error']}"[:100]] + [""] * (len(cols) - 2))
            continue
        c1, c8 = r["latency_c1_ms"], r["latency_c8_ms"]
        rows.append([name, f"{r['texts_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                     *(f"{c1[p]:.1f} ms" for p in ("p50", "p95", "p99")),
                     *(f"{c8[p]:.1f} ms" for p in ("p50", "p95", "p99")), f"{r['peak_rss_mb']} MB"])  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows if len(row) > i) for i in range(len(cols))]
    lines = [head, ""]
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    ratios = report.get("ratios") or {}
    if ratios:
        lines.append("")
        lines.append("throughput ratios: " + ", ".join(f"{k} {v}×" for k, v in ratios.items()))  # type: ignore[union-attr]
    lines.extend(_paired_table(report.get("paired_c1")))
    return "\n".join(lines)


def _paired_table(paired: object) -> list[str]:
    """The side-by-side single-query run: p50s and the per-round differences (paired_latency.py)."""
    if not isinstance(paired, dict) or not paired.get("systems"):
        return [f"\nside by side: {paired['error']}"] if isinstance(paired, dict) and "error" in paired else []
    lines = [
        "",
        f"single query, side by side ({paired['rounds']} rounds, systems in turns; ms):",
        "| system | p10 | p50 | p90 | − onnxruntime (paired p50) | − triton (paired p50) | − triton-http (paired p50)"
        " |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in paired["systems"].items():
        over = [row.get(f"minus_{other}_p50_ms") for other in ("onnxruntime", "triton", "triton-http")]
        cells = " | ".join("" if value is None else f"{value:+.3f}" for value in over)
        lines.append(f"| {name} | {row['p10_ms']} | {row['p50_ms']} | {row['p90_ms']} | {cells} |")
    for name, error in (paired.get("errors") or {}).items():
        lines.append(f"| {name} | error: {error[:80]} | | | | | |")
    return lines


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
