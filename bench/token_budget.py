"""What the encoder's token budget saves on a mixed batch: one long text among short ones.

Runs the exported encoder through the very runner the Triton model uses (`PaddedOnnxRunner`), once as one call
padded to the longest row (budget off, what a plain dynamic batcher does) and once with the token budget
(length-sorted sub-batches), on the same requests; prints a table and writes JSON under bench/results/.

    python -m bge_triton.bench.token_budget --repository bench/models/m3-repository --model bge-m3 \
        --long 2048 --short 32 --shorts 15
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from datetime import date
from pathlib import Path

import numpy as np

from bge_triton.model_facts import read_facts
from bge_triton.triton_models.onnx_runner import DEFAULT_MAX_BATCH_TOKENS, PaddedOnnxRunner


def _requests(lengths: list[int], vocab: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One single-row request per length (as Triton's dynamic batcher hands them over), random ids."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(5, vocab, size=(1, n), dtype=np.int64)
        ids[0, 0], ids[0, -1] = 0, 2  # <s> ... </s>
        out.append({"input_ids": ids, "attention_mask": np.ones((1, n), dtype=np.int64)})
    return out


def _peak_rss_mb() -> float:
    """This process's peak so far (the budgeted run goes first, so its figure is its own)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(repository: Path, model: str, long: int, short: int, shorts: int, threads: int) -> dict[str, object]:
    facts = read_facts(repository / model)
    encoder = repository / f"{model}-encoder/1/model.onnx"
    requests = _requests([long] + [short] * shorts, facts.vocab_size)
    rows: dict[str, dict[str, object]] = {}
    outputs: dict[str, list[dict[str, np.ndarray]]] = {}
    for label, budget in (("token budget", DEFAULT_MAX_BATCH_TOKENS), ("one padded call", 0)):
        runner = PaddedOnnxRunner(encoder, threads=threads, max_batch_tokens=budget)
        started = time.perf_counter()
        outputs[label] = runner.run(requests)
        seconds = time.perf_counter() - started
        calls = runner.last_sub_batches
        rows[label] = {
            "seconds": round(seconds, 3),
            "onnxruntime_calls": [list(c) for c in calls],
            "padded_tokens": int(sum(n * length for n, length in calls)),
            "real_tokens": long + short * shorts,
            "peak_rss_mb": round(_peak_rss_mb()),
        }
    diff = max(
        float(np.abs(a["last_hidden_state"] - b["last_hidden_state"]).max())
        for a, b in zip(outputs["token budget"], outputs["one padded call"], strict=True)
    )
    return {
        "model": model,
        "precision": facts.precision,
        "batch": f"1 x {long} tokens + {shorts} x {short} tokens",
        "threads": threads,
        "machine": platform.processor() or platform.machine(),
        "date": date.today().isoformat(),
        "max_abs_diff_between_modes": diff,
        "runs": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--long", type=int, default=2048, help="tokens of the one long text")
    p.add_argument("--short", type=int, default=32, help="tokens of each short text")
    p.add_argument("--shorts", type=int, default=15, help="how many short texts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    report = run(args.repository, args.model, args.long, args.short, args.shorts, args.threads)
    print(f"{report['model']} ({report['precision']}), {report['batch']}, {args.threads} threads")
    print(f"{'mode':<18} {'seconds':>8} {'padded tokens':>14}  onnxruntime calls (rows x length)")
    for label, row in report["runs"].items():  # type: ignore[union-attr]
        calls = ", ".join(f"{n}x{length}" for n, length in row["onnxruntime_calls"])
        print(f"{label:<18} {row['seconds']:>8.2f} {row['padded_tokens']:>14}  {calls}")
    print(f"max abs diff between the two modes: {report['max_abs_diff_between_modes']:.2e}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{report['date']}-token-budget-{report['model']}-{args.long}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
