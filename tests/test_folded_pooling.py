"""The local target's encoder step pools (issue 19): the ensembles run tokenizer -> encoder, two steps at run time,
with vectors equal to the three-step chain's (encoder, then the pooling graph on its own) within 1e-6."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.export.exporter import ExportResult, encoder_input_names
from bge_triton.export.model_configs import POOLING_FILE, parse_config
from bge_triton.export.parity import OnnxPipeline
from bge_triton.export.repository import write_repository
from bge_triton.launcher import TritonOptions
from bge_triton.triton_models.onnx_runner import PaddedOnnxRunner, PooledSession, onnx_session

MODEL = "all-MiniLM-L6-v2"
TEXTS = [
    "短",
    "The quick brown fox jumps over the lazy dog.",
    "中文和English混合的句子，长度不同。" * 6,
    "a query of a few words",
    "",
]


def _steps(repo: Path, name: str) -> list[str]:
    return [s.model_name for s in parse_config((repo / name / "config.pbtxt").read_text()).ensemble_scheduling.step]


def _graphs(exported: ExportResult) -> tuple[Path, Path, Path]:
    repo, name = exported.ensemble_dir.parent, exported.facts.name
    return (
        repo / f"{name}-tokenizer/1/tokenizer.json",
        repo / f"{name}-encoder/1/model.onnx",
        repo / f"{name}-pooling/1/model.onnx",
    )


def test_local_ensembles_run_two_steps_and_the_encoder_pools(exported: ExportResult) -> None:
    repo = exported.ensemble_dir.parent
    assert _steps(repo, MODEL) == [f"{MODEL}-tokenizer", f"{MODEL}-encoder"]
    assert _steps(repo, f"{MODEL}-ids") == [f"{MODEL}-tokenizer", f"{MODEL}-encoder"]
    ensemble = parse_config((repo / MODEL / "config.pbtxt").read_text())
    assert dict(ensemble.ensemble_scheduling.step[1].output_map) == {"embedding": "EMBEDDING"}
    encoder = parse_config((repo / f"{MODEL}-encoder/config.pbtxt").read_text())
    assert [(o.name, o.data_type, list(o.dims)) for o in encoder.output] == [
        ("last_hidden_state", mc.TYPE_FP32, [-1, 384]),
        ("embedding", mc.TYPE_FP32, [384]),
    ]
    assert encoder.parameters["pooling_onnx_file"].string_value == POOLING_FILE
    # the encoder's pooling graph is the pooling step's own graph; the pooling model stays, the step on its own
    pooling_graph = (repo / f"{MODEL}-pooling/1/model.onnx").read_bytes()
    assert (repo / f"{MODEL}-encoder/1" / POOLING_FILE).read_bytes() == pooling_graph


def test_container_gpu_keeps_three_steps(exported: ExportResult, tmp_path: Path) -> None:
    tokenizer, encoder, pooling = _graphs(exported)
    write_repository(
        tmp_path, exported.facts, tokenizer_json=tokenizer, encoder_onnx=encoder, pooling_onnx=pooling,
        input_names=encoder_input_names(exported.facts), target="container-gpu",
    )  # fmt: skip
    assert _steps(tmp_path, MODEL) == [f"{MODEL}-tokenizer", f"{MODEL}-encoder", f"{MODEL}-pooling"]
    config = parse_config((tmp_path / f"{MODEL}-encoder/config.pbtxt").read_text())
    assert [o.name for o in config.output] == ["last_hidden_state"] and "pooling_onnx_file" not in config.parameters
    assert not (tmp_path / f"{MODEL}-encoder/1" / POOLING_FILE).exists()


class _Counting:
    """A session that counts its runs."""

    def __init__(self, session: object) -> None:
        self.session = session
        self.runs = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.runs += 1
        return self.session.run(names, feeds)  # type: ignore[attr-defined]


def test_pooled_runner_equals_encoder_then_pooling(exported: ExportResult) -> None:
    """Ragged requests through the folded runner (token-budget sub-batches, pooled there) give the three-step
    chain's vectors within 1e-6, and the pooling graph runs only when `embedding` is asked for."""
    tokenizer, encoder, pooling = _graphs(exported)
    pipeline = OnnxPipeline(tokenizer, encoder, pooling, exported.facts, threads=1)
    requests, expected = [], []
    for texts in (TEXTS[:1], TEXTS[1:3], TEXTS[3:], TEXTS[2:3]):
        batch, hidden = pipeline.hidden_states(texts)
        expected.append(pipeline.pool(batch, hidden))
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in pipeline.encoder.input_names:
            feeds["token_type_ids"] = batch.token_type_ids
        requests.append(feeds)
    counted = _Counting(onnx_session(pooling, threads=1))
    pad = {"input_ids": float(exported.facts.pad_token_id)}
    runner = PaddedOnnxRunner(None, session=PooledSession(onnx_session(encoder, threads=1), counted), pad_values=pad)
    answers = runner.run(requests, ["embedding"])
    assert len(runner.last_sub_batches) > 1  # rows of different lengths were pooled in different sub-batches
    for answer, want in zip(answers, expected, strict=True):
        assert set(answer) == {"embedding"}
        assert answer["embedding"].shape == want.shape and answer["embedding"].dtype == np.float32
        assert float(np.abs(answer["embedding"] - want).max()) <= 1e-6
    runs = counted.runs
    hidden_only = runner.run(requests, ["last_hidden_state"])
    assert counted.runs == runs and set(hidden_only[0]) == {"last_hidden_state"}
    both = runner.run(requests[:1])  # no names: every output, the hidden states at the request's width
    assert both[0]["last_hidden_state"].shape[:2] == requests[0]["input_ids"].shape


def test_served_vectors_equal_the_three_step_chain(exported: ExportResult, triton: TritonOptions) -> None:
    """Through the real tritonserver: the two-step ensemble's vectors equal encoder-then-pooling within 1e-6, and
    the pooling model never runs."""
    tokenizer, encoder, pooling = _graphs(exported)
    expected = OnnxPipeline(tokenizer, encoder, pooling, exported.facts, threads=1).embed(TEXTS)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    data = np.array([[t.encode("utf-8")] for t in TEXTS], dtype=object)
    inp = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    served = client.infer(MODEL, [inp]).as_numpy("EMBEDDING")
    assert served.shape == expected.shape
    assert float(np.abs(served - expected).max()) <= 1e-6
    stats = client.get_inference_statistics(f"{MODEL}-pooling", as_json=True)["model_stats"]
    assert sum(int(s.get("execution_count", 0)) for s in stats) == 0


@pytest.mark.parametrize("names", [None, ["embedding", "last_hidden_state"]])
def test_pooled_session_returns_outputs_in_the_order_asked(exported: ExportResult, names: list[str] | None) -> None:
    _, encoder, pooling = _graphs(exported)
    session = PooledSession(onnx_session(encoder, threads=1), onnx_session(pooling, threads=1))
    feeds = {
        "input_ids": np.array([[101, 2023, 102]], dtype=np.int64),
        "attention_mask": np.ones((1, 3), dtype=np.int64),
        "token_type_ids": np.zeros((1, 3), dtype=np.int64),
    }
    feeds = {k: v for k, v in feeds.items() if k in [i.name for i in session.get_inputs()]}
    out = session.run(names, feeds)
    shapes = [o.shape for o in out]
    assert shapes == ([(1, 3, 384), (1, 384)] if names is None else [(1, 384), (1, 3, 384)])
