"""The benchmark harness at a tiny size: every system runs and the JSON report is well formed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bge_triton.bench.harness import ALL_SYSTEMS, BenchOptions, format_table, run_bench
from bge_triton.bench.workloads import make_texts
from bge_triton.export.checkpoint import minilm_dir
from bge_triton.export.exporter import ExportResult
from bge_triton.package_data import model_config_dir
from bge_triton.triton_models.tokenizer import TextTokenizer


@pytest.mark.parametrize(("workload", "tokens"), [("short", 16), ("sentence", 64), ("passage", 256)])
def test_workloads_are_defined_by_token_length(exported: ExportResult, workload: str, tokens: int) -> None:
    repo, facts = exported.ensemble_dir.parent, exported.facts
    tokenizer_json = repo / f"{facts.name}-tokenizer/1/tokenizer.json"
    texts = make_texts(tokenizer_json, workload, 20, facts.max_tokens)
    counts = TextTokenizer(tokenizer_json, facts.max_tokens, facts.pad_token_id).encode(texts).full_token_count
    assert len(set(texts)) == 20  # English corpus for MiniLM: no CJK
    assert not any("\u4e00" <= ch <= "\u9fff" for t in texts for ch in t)
    assert abs(float(counts.mean()) - tokens) <= 1 and counts.max() <= tokens


def test_chinese_text_for_the_bge_zh_vocabulary(tmp_path: Path) -> None:
    texts = make_texts(model_config_dir("bge-large-zh-v1.5") / "tokenizer.json", "mix", 50, 512)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts)
    assert len({len(t) for t in texts}) > 2  # the mix has several lengths


def test_harness_runs_every_system_and_writes_json(exported: ExportResult, tmp_path: Path) -> None:
    opts = BenchOptions(
        checkpoint=minilm_dir(), repository=exported.ensemble_dir.parent, model=exported.facts.name,
        workload="sentence", systems=ALL_SYSTEMS, texts=16, queries=4, batch=4, concurrency=2, out_dir=tmp_path,
        paired_rounds=12,
    )  # fmt: skip
    report = run_bench(opts)
    saved = json.loads(Path(str(report["path"])).read_text())
    assert set(saved["systems"]) == set(ALL_SYSTEMS)
    for name, result in saved["systems"].items():
        assert "error" not in result, (name, result)
        assert result["texts_per_s"] > 0 and result["tokens_per_s"] > result["texts_per_s"]
        for run in ("latency_c1_ms", "latency_c8_ms"):
            assert 0 < result[run]["p50"] <= result[run]["p95"] <= result[run]["p99"], (name, run)
        assert result["peak_rss_mb"] > 0
    assert saved["mean_tokens_per_text"] == pytest.approx(64, abs=1)
    assert {"triton_vs_onnxruntime", "proxy_vs_onnxruntime", "triton_vs_infinity"} <= set(saved["ratios"])
    assert "| onnxruntime" in format_table(saved) and "throughput ratios" in format_table(saved)
    # the side-by-side single-query run: every system but perf_analyzer, and Triton over HTTP too; paired
    # differences to onnxruntime, and the proxy's to both Triton systems (it talks HTTP to Triton), triton-http's to
    # Triton over gRPC
    paired = saved["paired_c1"]
    assert paired["rounds"] == 12 and not paired["errors"], paired
    assert set(paired["systems"]) == set(ALL_SYSTEMS) - {"perf_analyzer"} | {"triton-http"}
    assert "minus_triton_p50_ms" in paired["systems"]["triton-http"]
    for name, row in paired["systems"].items():
        assert 0 < row["p10_ms"] <= row["p50_ms"] <= row["p90_ms"], (name, row)
        assert ("minus_onnxruntime_p50_ms" in row) == (name != "onnxruntime")
    assert set(paired["systems"]["proxy"]) >= {
        "minus_onnxruntime_p50_ms", "minus_triton_p50_ms", "minus_triton-http_p50_ms"
    }  # fmt: skip
    assert "single query, side by side (12 rounds" in format_table(saved)


def test_the_bench_command_offers_every_workload() -> None:
    from bge_triton.bench.workloads import WORKLOADS
    from bge_triton.cli import build_parser

    for workload in WORKLOADS:
        assert build_parser().parse_args(["bench", "--workload", workload]).workload == workload


def test_the_bench_command_runs_the_rerank_benchmark(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`bge-triton bench --task rerank` needs a cross-encoder; its report names every system it measured."""
    from bge_triton.bench.rerank_bench import write_report
    from bge_triton.cli import main

    assert main(["bench", "--task", "rerank"]) == 2
    assert "--checkpoint DIR (a cross-encoder) or --make-model" in capsys.readouterr().err
    row = {"pairs_per_s": 12.5, "latency_ms": {"p50": 80.0, "p99": 120.0}}
    report = {
        "kind": "throughput",
        "layers_hidden": "24 x 1024",
        "threads": 2,
        "systems": {"triton": row, "cross-encoder": row, "infinity": {"error": "RuntimeError('missing')"}},
    }
    path = write_report(report, tmp_path)
    assert json.loads(path.read_text())["systems"]["infinity"]["error"]
    table = capsys.readouterr().out
    assert "| triton | 12.5 | 80.0 | 120.0 |" in table and "| infinity | error: RuntimeError('missing')" in table


def test_engines_given_raw_strings_embed_what_the_client_sends(exported: ExportResult, tmp_path: Path) -> None:
    """Triton's client and the proxy put the passage instruction in front of every text (e5's "passage: "): the
    in-process engines and infinity must embed the same strings, or they are timed on fewer tokens."""
    import asyncio
    import dataclasses

    from bge_triton.bench.systems import InfinitySystem, OnnxRuntimeSystem, Spec

    spec = Spec(minilm_dir(), exported.ensemble_dir.parent, exported.facts.name, threads=1, work_dir=tmp_path)
    e5_like = dataclasses.replace(exported.facts, passage_instruction="passage: ")
    seen: list[object] = []

    onnx = OnnxRuntimeSystem(spec)
    onnx.facts = e5_like  # type: ignore[misc]
    onnx.pipeline = type("Recorder", (), {"embed": lambda self, texts, batch: seen.append(texts)})()
    onnx._serial = asyncio.Lock()
    infinity = InfinitySystem(spec)
    infinity.facts = e5_like  # type: ignore[misc]
    infinity.endpoint = "http://infinity/embeddings"

    class Poster:
        async def post(self, url: str, body: dict[str, object]) -> bytes:
            seen.append(body["input"])
            return b"{}"

    infinity.http = Poster()  # type: ignore[assignment]

    async def embed_both() -> None:
        await onnx.embed(["a", "b"])
        await infinity.embed(["a", "b"])

    asyncio.run(embed_both())
    assert seen == [["passage: a", "passage: b"]] * 2
    assert OnnxRuntimeSystem(spec).as_passages(["a"]) == ["a"]  # MiniLM has no instruction


def test_paired_differences_are_per_round_medians() -> None:
    from bge_triton.bench.paired_latency import differences

    samples = {
        "onnxruntime": [10.0, 10.0, 30.0, 10.0, 10.0],
        "triton": [12.0, 11.0, 32.0, 13.0, 12.0],
        "proxy": [13.0, 13.0, 50.0, 14.0, 14.0],
        "triton-http": [11.0, 11.0, 31.0, 12.0, 12.0],
    }
    rows = differences(samples)
    assert rows["triton-http"]["minus_triton_p50_ms"] == -1.0  # per round: -1, 0, -1, -1, 0
    assert rows["triton"]["minus_onnxruntime_p50_ms"] == 2.0  # per round: 2, 1, 2, 3, 2
    assert rows["proxy"]["minus_triton_p50_ms"] == 2.0  # per round: 1, 2, 18, 1, 2
    assert rows["proxy"]["minus_triton-http_p50_ms"] == 2.0  # per round: 2, 2, 19, 2, 2
    assert rows["proxy"]["minus_onnxruntime_p50_ms"] == 4.0
    assert rows["onnxruntime"] == {"p10_ms": 10.0, "p50_ms": 10.0, "p90_ms": 30.0}
    assert "minus_triton_p50_ms" not in rows["triton"]
    assert "minus_triton-http_p50_ms" not in rows["triton-http"]
    assert "minus_triton-http_p50_ms" not in rows["triton"]


def test_a_system_that_failed_to_start_stops_cleanly_and_is_reported(tmp_path: Path, monkeypatch) -> None:
    """The side-by-side run stops a system whose start() failed and reports its error: infinity without its venv
    once took the whole run down (AttributeError in stop())."""
    from bge_triton.bench import paired_latency, systems

    monkeypatch.setattr(systems, "INFINITY_BIN", tmp_path / "absent" / "infinity_emb")
    spec = systems.Spec(tmp_path, tmp_path, "m", threads=1, work_dir=tmp_path)
    plan = type("Plan", (), {"spec": spec, "queries": ["q"]})()
    result = paired_latency.run(plan, ["infinity"], rounds=2)  # type: ignore[arg-type]
    assert result["systems"] == {}
    assert "infinity_emb missing" in result["errors"]["infinity"]  # type: ignore[index]
