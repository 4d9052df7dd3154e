"""bench/trace.py: Triton's trace of single-text requests split into steps and phases (issue 19's breakdown)."""

from __future__ import annotations

from pathlib import Path

from bge_triton.bench.trace import PHASES, format_table, run_trace

MODEL = "all-MiniLM-L6-v2"


def test_trace_splits_a_request_into_its_steps(repository: Path) -> None:
    report = run_trace(repository, MODEL, requests=6, warmup=2, text="how do I deploy an embedding model?")
    rows = report.rows
    # one step on the local target: the encoder tokenizes and pools (issue 19), the other two models never run
    assert {"encoder", "ensemble total", "client round trip"} <= set(rows)
    assert "tokenizer" not in rows and "pooling" not in rows
    for step in ("encoder",):
        assert set(rows[step]) == {"queue", "input", "execute", "output", "total"}
        assert all(value >= 0 for value in rows[step].values()), rows[step]
    # the phases lie inside the step, request by request (a sum of medians need not stay under the median total)
    steps = [r for r in report.traced if r.parent is not None and r.model == f"{MODEL}-encoder"]
    assert len(steps) == 6
    for request in steps:
        spans = {phase: request.span_ms(start, end) for phase, start, end in PHASES}
        assert None not in spans.values(), request.ns
        parts = [spans[phase] or 0.0 for phase in ("queue", "input", "execute", "output")]
        assert all(part >= 0 for part in parts) and sum(parts) <= (spans["total"] or 0.0), request.ns
    for step in ("encoder",):
        assert rows[step]["total"] < rows["ensemble total"]["total"]
    assert rows["encoder"]["execute"] > 0
    # Medians of a few noisy samples: the round trip is not ordered against the ensemble's median, only present.
    assert rows["client round trip"]["total"] > 0 and "client (gRPC, serialisation)" in rows
    table = format_table(report)
    assert "6 single-text requests" in table and "encoder" in table
