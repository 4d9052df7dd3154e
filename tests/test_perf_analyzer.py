"""perf_analyzer driver: its input JSON always; a short real run when perf_analyzer is installed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from bge_triton.bench.perf_analyzer import (
    ENV_VAR,
    PerfResult,
    _spread_for_concurrency,
    build_command,
    find_perf_analyzer,
    parse_csv,
    run_perf_analyzer,
    write_input_data,
)
from bge_triton.launcher import TritonOptions

MODEL = "all-MiniLM-L6-v2"

# A report as perf_analyzer 2.46 writes it with -f (latencies in microseconds).
CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "4,148.783,8,6476,1,85,11078,692,6,17722,21843,21994,23568\n"
)


def test_input_data_is_one_entry_per_text_in_request_order(tmp_path: Path) -> None:
    groups = [["a first text", "今天天气很好"], ["b", "c"], ["d", "e"]]
    path = tmp_path / "input.json"
    assert write_input_data(groups, path) == 2  # the batch size to pass as -b
    document = json.loads(path.read_text(encoding="utf-8"))
    assert list(document) == ["data"]
    # perf_analyzer prepends the batch dimension itself: each entry is one [1]-shaped batch element.
    assert document["data"] == [{"TEXT": {"content": [t], "shape": [1]}} for g in groups for t in g]
    assert "今天天气很好" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes


@pytest.mark.parametrize(
    ("groups", "error"),
    [([], ValueError), ([["a"], ["b", "c"]], ValueError), ([[], []], ValueError), ([["a", 1]], TypeError)],
)
def test_input_data_rejects_what_perf_analyzer_cannot_send(tmp_path: Path, groups: list, error: type) -> None:
    with pytest.raises(error):
        write_input_data(groups, tmp_path / "input.json")


def test_each_group_is_repeated_once_per_concurrent_thread() -> None:
    data = ["a0", "a1", "b0", "b1", "c0", "c1"]
    assert _spread_for_concurrency(data, 2, 1) == data
    expected = ["a0", "a1", "a0", "a1", "b0", "b1", "b0", "b1", "c0", "c1", "c0", "c1"]
    assert _spread_for_concurrency(data, 2, 2) == expected


def test_csv_report_is_parsed_to_milliseconds() -> None:
    parsed = parse_csv(CSV, 4)
    assert parsed["infer_per_s"] == pytest.approx(148.783)
    assert (parsed["p50_ms"], parsed["p90_ms"], parsed["p95_ms"], parsed["p99_ms"]) == pytest.approx(
        (17.722, 21.843, 21.994, 23.568)
    )
    assert parsed["avg_ms"] == pytest.approx((8 + 6476 + 1 + 85 + 11078 + 692 + 6) / 1000)
    assert parsed["server_avg_ms"] == pytest.approx((1 + 85 + 11078 + 692) / 1000)  # queue + compute only
    with pytest.raises(ValueError, match="concurrency 1"):
        parse_csv(CSV, 1)


def test_environment_variable_names_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "perf_analyzer"
    exe.write_text("#!/bin/sh\n", encoding="utf-8")
    monkeypatch.setenv(ENV_VAR, str(exe))
    assert find_perf_analyzer() is None  # not executable
    exe.chmod(0o755)
    assert find_perf_analyzer() == exe


@pytest.fixture(scope="session")
def perf_analyzer() -> Path:
    """The installed perf_analyzer; requested before `triton` so that a skip starts no server."""
    found = find_perf_analyzer()
    if found is None:
        pytest.skip(f"perf_analyzer not installed: run bench/install_perf_analyzer.sh or set ${ENV_VAR}")
    return found


def _counts(url: str) -> tuple[int, int]:
    """(texts, requests) the ensemble has answered so far, from Triton's own statistics."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    success = stats.get("inference_stats", {}).get("success", {})  # protobuf's JSON leaves zero counts out
    return int(stats.get("inference_count", 0)), int(success.get("count", 0))


def test_perf_analyzer_measures_the_ensemble(perf_analyzer: Path, triton: TritonOptions, tmp_path: Path) -> None:
    groups = [[f"request {k} text {i}: " + "word " * (3 + 5 * k + i) for i in range(4)] for k in range(3)]
    input_json = tmp_path / "input.json"
    batch_size = write_input_data(groups, input_json)
    texts_before, requests_before = _counts(triton.grpc_url)
    # One window of a fixed number of requests: a busy shared CPU cannot fail it for instability (6 windows of 1 s
    # within a factor of 2 did fail once), and what is checked here is the measurement, not the machine.
    result = run_perf_analyzer(
        MODEL, triton.grpc_url, input_json, concurrency=2, batch_size=batch_size, request_count=40, timeout_s=60,
        executable=perf_analyzer,
    )  # fmt: skip
    texts_after, requests_after = _counts(triton.grpc_url)

    assert isinstance(result, PerfResult)
    assert (result.model, result.concurrency, result.batch_size) == (MODEL, 2, 4)
    assert result.infer_per_s > 0 and result.texts_per_s == result.infer_per_s
    assert result.requests_per_s == pytest.approx(result.texts_per_s / 4)
    assert 0 < result.p50_ms <= result.p90_ms <= result.p95_ms <= result.p99_ms
    assert result.avg_ms > 0 and result.request_count and result.request_count > 0
    assert "--concurrency-range=2:2" in result.command and result.csv.startswith("Concurrency,")
    # Every request the server answered carried exactly batch_size texts.
    requests = requests_after - requests_before
    assert requests >= result.request_count
    assert texts_after - texts_before == batch_size * requests
    assert os.access(perf_analyzer, os.X_OK)


def test_command_names_the_protocol(tmp_path: Path) -> None:
    common = dict(
        concurrency=1, batch_size=1, measurement_ms=1000, max_trials=3, stability_percentage=50, percentile=None,
        measurement_request_count=None,
    )  # fmt: skip
    args = (tmp_path / "pa", "m", "127.0.0.1:8000", tmp_path / "in.json", tmp_path / "out.csv")
    grpc_command = build_command(*args, **common)
    http_command = build_command(*args, **common, protocol="http")
    assert grpc_command[grpc_command.index("-i") + 1] == "grpc"  # the default, as before
    assert http_command[http_command.index("-i") + 1] == "http"
    with pytest.raises(ValueError, match="unknown protocol"):
        build_command(*args, **common, protocol="grpcs")
