"""bench/ab_latency.py: systems queried in rotating turns, paired differences per round."""

from __future__ import annotations

from bge_triton.bench.ab_latency import _measure, summary


def test_turns_rotate_and_the_warmup_is_dropped() -> None:
    order: list[str] = []
    calls = {name: (lambda q, n=name: order.append(n)) for name in ("a", "b", "c")}
    samples = _measure(calls, [f"q{i}" for i in range(5)], warmup=2)
    assert order[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one system later
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_summary_pairs_each_round() -> None:
    base = [10.0, 50.0, 12.0, 11.0, 13.0, 90.0, 14.0, 15.0, 16.0, 17.0]
    slower = [x + 2.0 for x in base]  # the same load every round, 2 ms more each time
    faster = [x + 0.5 for x in base]
    rows = summary({"onnxruntime": base, "triton[0]": slower, "triton[1]": faster}, "onnxruntime")
    assert rows["onnxruntime"] == {"p10_ms": 11.0, "p50_ms": 14.5, "p90_ms": 90.0}
    assert rows["triton[0]"]["minus_onnxruntime_p50_ms"] == 2.0
    assert rows["triton[1]"]["minus_onnxruntime_p50_ms"] == 0.5
    assert rows["triton[1]"]["minus_triton[0]_p50_ms"] == -1.5
    assert rows["triton[1]"]["p10_minus_triton[0]_p10_ms"] == -1.5
