"""Where one request's time goes inside the Triton ensemble: Triton's trace API, step by step.

Starts a tritonserver on the repository with tracing of every request (`--trace-config level=TIMESTAMPS`,
`rate=1`), sends single-text requests one at a time over gRPC (the RAG query path: batch 1, concurrency 1), stops
the server so the trace file is complete, and splits each request's time into:

- per composing model (tokenizer, encoder, and pooling where it is a step of its own): queue (QUEUE_START ->
  COMPUTE_START: the dynamic batcher's delay), input (COMPUTE_START -> COMPUTE_INPUT_END: tensors into the Python
  backend's shared memory), execute (COMPUTE_INPUT_END -> COMPUTE_OUTPUT_START: the model's own code) and output
  (-> COMPUTE_END);
- the ensemble's own share: its REQUEST_START -> REQUEST_END minus the time inside its steps (scheduling and the
  hops between steps);
- the client's share: the gRPC round trip seen by the client minus the ensemble's time (serialisation, network).

    python -m bge_triton.bench.trace --repository DIR --model NAME [--requests 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PHASES: tuple[tuple[str, str, str], ...] = (
    ("queue", "QUEUE_START", "COMPUTE_START"),
    ("input", "COMPUTE_START", "COMPUTE_INPUT_END"),
    ("execute", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
    ("output", "COMPUTE_OUTPUT_START", "COMPUTE_END"),
    ("total", "REQUEST_START", "REQUEST_END"),
)


@dataclass
class TracedRequest:
    """One traced inference: a top-level request (parent None) or a step of an ensemble (parent = its id)."""

    id: int
    model: str = ""
    parent: int | None = None
    ns: dict[str, int] = field(default_factory=dict)

    def span_ms(self, start: str, end: str) -> float | None:
        if start in self.ns and end in self.ns:
            return (self.ns[end] - self.ns[start]) / 1e6
        return None


def parse_trace(path: Path) -> list[TracedRequest]:
    """Triton's trace file (a JSON list of records keyed by trace id) as one object per traced request."""
    records = json.loads(path.read_text())
    requests: dict[int, TracedRequest] = {}
    for record in records:
        request = requests.setdefault(record["id"], TracedRequest(record["id"]))
        if "model_name" in record:
            request.model = record["model_name"]
            request.parent = record.get("parent_id")
        for stamp in record.get("timestamps", []):
            request.ns.setdefault(stamp["name"], stamp["ns"])
    return list(requests.values())


def breakdown(requests: list[TracedRequest], ensemble: str, client_ms: list[float]) -> dict[str, dict[str, float]]:
    """Median milliseconds per row: each step's phases, the ensemble's own share, the client's share."""
    tops = [r for r in requests if r.model == ensemble and r.parent is None]
    children: dict[int, list[TracedRequest]] = defaultdict(list)
    for request in requests:
        if request.parent is not None:
            children[request.parent].append(request)
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for top in tops:
        total = top.span_ms("REQUEST_START", "REQUEST_END")
        if total is None:
            continue
        inside = 0.0
        for step in children[top.id]:
            role = step.model.removeprefix(ensemble).lstrip("-") or step.model
            for phase, start, end in PHASES:
                value = step.span_ms(start, end)
                if value is not None:
                    samples[role][phase].append(value)
            inside += step.span_ms("REQUEST_START", "REQUEST_END") or 0.0
        samples["ensemble (scheduling, hops)"]["total"].append(total - inside)
        samples["ensemble total"]["total"].append(total)
    ensemble_median = statistics.median(samples["ensemble total"]["total"]) if tops else 0.0
    if client_ms:
        samples["client (gRPC, serialisation)"]["total"].append(statistics.median(client_ms) - ensemble_median)
        samples["client round trip"]["total"] = list(client_ms)
    return {
        row: {phase: round(statistics.median(values), 3) for phase, values in phases.items()}
        for row, phases in samples.items()
    }


@dataclass
class TraceReport:
    model: str
    requests: int
    text: str
    rows: dict[str, dict[str, float]]
    traced: list[TracedRequest] = field(default_factory=list, repr=False)  # the kept requests and their steps


def run_trace(repository: Path, model: str, *, requests: int = 100, warmup: int = 10, text: str = "") -> TraceReport:
    import tritonclient.grpc as grpcclient

    from bge_triton.launcher import TritonOptions, TritonServer, free_port

    text = text or "query: 如何在生产环境中部署中文向量模型？"  # a 16-token query for bge-zh and e5
    with tempfile.TemporaryDirectory(prefix="bge-triton-trace-") as tmp:
        trace_file = Path(tmp) / "trace.json"
        options = TritonOptions(
            repository=repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
            extra_args=[f"--trace-config=triton,file={trace_file}", "--trace-config=level=TIMESTAMPS",
                        "--trace-config=rate=1", "--trace-config=count=-1", "--trace-config=mode=triton"],
        )  # fmt: skip
        client_ms: list[float] = []
        with TritonServer(options, log_file=Path(tmp) / "tritonserver.log"):
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{options.grpc_port}")
            payload = np.array([[text.encode()]], dtype=object)
            for i in range(warmup + requests):
                tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
                tensor.set_data_from_numpy(payload)
                started = time.perf_counter()
                client.infer(model, [tensor])
                if i >= warmup:
                    client_ms.append((time.perf_counter() - started) * 1000)
            client.close()
        traced = parse_trace(trace_file)
    tops = sorted((r for r in traced if r.model == model and r.parent is None), key=lambda r: r.ns["REQUEST_START"])
    keep = {r.id for r in tops[warmup:]}
    kept = [r for r in traced if r.id in keep or r.parent in keep]
    return TraceReport(model, requests, text, breakdown(kept, model, client_ms), kept)


def format_table(report: TraceReport) -> str:
    phases = [p for p, _, _ in PHASES]
    lines = [f"{report.model}: median ms of {report.requests} single-text requests, one at a time", ""]
    lines.append(f"{'step':<32}" + "".join(f"{p:>10}" for p in phases))
    for row, values in report.rows.items():
        lines.append(f"{row:<32}" + "".join(f"{values[p]:>10.3f}" if p in values else f"{'':>10}" for p in phases))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="an exported model repository")
    parser.add_argument("--model", required=True, help="the ensemble to trace (the served model name)")
    parser.add_argument("--requests", type=int, default=100, help="traced requests after the warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="untraced-in-the-result requests first")
    parser.add_argument("--text", default="", help="the query text (default: a 16-token Chinese query)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    report = run_trace(args.repository, args.model, requests=args.requests, warmup=args.warmup, text=args.text)
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {key: value for key, value in asdict(report).items() if key != "traced"}
        args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
