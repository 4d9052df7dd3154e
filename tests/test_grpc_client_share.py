"""bench/grpc_client_share.py: client variants in processes of their own, paired per round."""

from __future__ import annotations

from bge_triton.bench.grpc_client_share import VARIANTS, WARMUP_ROUNDS, measure_clients, summary
from bge_triton.launcher import TritonOptions


def test_summary_pairs_each_round_against_grpc() -> None:
    walls = {"grpc": [10.0, 30.0, 11.0], "http": [9.5, 29.0, 10.4]}
    cpus = {"grpc": [1.0, 1.2, 1.4], "http": [0.5, 0.7, 0.6]}
    rows = summary(walls, cpus)
    assert rows["grpc"] == {"p10_ms": 10.0, "p50_ms": 11.0, "p90_ms": 30.0, "cpu_ms_per_call": 1.2}
    assert rows["http"]["minus_grpc_p50_ms"] == -0.6  # median of -0.5, -1.0, -0.6
    assert rows["http"]["cpu_ms_per_call"] == 0.6


def test_each_variant_answers_from_its_own_process(triton: TritonOptions) -> None:
    queries = [f"query {i} about vectors" for i in range(WARMUP_ROUNDS + 6)]
    rows = measure_clients({"grpc": triton.grpc_url, "http": triton.http_url}, "all-MiniLM-L6-v2", queries)
    assert set(rows) == set(VARIANTS)
    for name, row in rows.items():
        assert 0 < row["p10_ms"] <= row["p50_ms"] <= row["p90_ms"] < 5000
        assert row["cpu_ms_per_call"] > 0
        assert ("minus_grpc_p50_ms" in row) == (name != "grpc")
