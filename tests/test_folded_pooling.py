"""The local target's encoder step tokenizes and pools (issue 19, `triton_models/text_encoder.py`): the dense
ensembles run ONE step at run time, with vectors and counts equal to the three-step chain's (tokenizer, encoder, then
the pooling graph on its own) within 1e-6; the encoder still takes the tokenizer's ids (the proxy's token routes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from bge_triton.export.exporter import ExportResult, encoder_input_names
from bge_triton.export.model_configs import POOLING_FILE, parse_config
from bge_triton.export.parity import OnnxPipeline
from bge_triton.export.repository import write_repository
from bge_triton.launcher import TritonOptions
from bge_triton.triton_models import text_encoder
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


def test_local_ensembles_run_one_step_that_tokenizes_encodes_and_pools(exported: ExportResult) -> None:
    repo = exported.ensemble_dir.parent
    assert _steps(repo, MODEL) == [f"{MODEL}-encoder"]
    assert _steps(repo, f"{MODEL}-ids") == [f"{MODEL}-encoder"]
    counts = {"TOKEN_COUNT": "TOKEN_COUNT", "FULL_TOKEN_COUNT": "FULL_TOKEN_COUNT"}
    for name, source in ((MODEL, "TEXT"), (f"{MODEL}-ids", "TOKEN_IDS")):
        step = parse_config((repo / name / "config.pbtxt").read_text()).ensemble_scheduling.step[0]
        assert dict(step.input_map) == {source: source}
        assert dict(step.output_map) == {"embedding": "EMBEDDING", **counts}
    encoder = parse_config((repo / f"{MODEL}-encoder/config.pbtxt").read_text())
    assert [(o.name, o.data_type, list(o.dims)) for o in encoder.output] == [
        ("last_hidden_state", mc.TYPE_FP32, [-1, 384]),
        ("embedding", mc.TYPE_FP32, [384]),
        ("INPUT_IDS", mc.TYPE_INT64, [-1]),
        ("ATTENTION_MASK", mc.TYPE_INT64, [-1]),
        ("TOKEN_COUNT", mc.TYPE_INT64, [1]),
        ("FULL_TOKEN_COUNT", mc.TYPE_INT64, [1]),
    ]
    # every input optional: one kind per request (text, token ids, or the encoder's own inputs)
    assert [(i.name, i.optional) for i in encoder.input] == [
        ("input_ids", True), ("attention_mask", True), ("token_type_ids", True), ("TEXT", True), ("TOKEN_IDS", True),
    ]  # fmt: skip
    assert encoder.parameters["pooling_onnx_file"].string_value == POOLING_FILE
    tokenizer = parse_config((repo / f"{MODEL}-tokenizer/config.pbtxt").read_text())
    for key in ("tokenizer_file", "max_tokens", "pad_token_id", "pad_to_multiple_of", "pad_buckets"):
        assert encoder.parameters[key] == tokenizer.parameters[key]
    # the encoder's pooling graph and tokenizer are the pooling and tokenizer steps' own files; those models stay,
    # each step on its own
    folder = repo / f"{MODEL}-encoder/1"
    assert (folder / POOLING_FILE).read_bytes() == (repo / f"{MODEL}-pooling/1/model.onnx").read_bytes()
    assert (folder / "tokenizer.json").read_bytes() == (repo / f"{MODEL}-tokenizer/1/tokenizer.json").read_bytes()
    sources = Path(text_encoder.__file__).parent
    for name, source in (("model.py", "text_encoder.py"), ("onnx_runner.py", "onnx_runner.py"), ("tokenizer.py",
                         "tokenizer.py")):  # fmt: skip
        assert (folder / name).read_bytes() == (sources / source).read_bytes()


def test_container_gpu_keeps_three_steps(exported: ExportResult, tmp_path: Path) -> None:
    tokenizer, encoder, pooling = _graphs(exported)
    write_repository(
        tmp_path, exported.facts, tokenizer_json=tokenizer, encoder_onnx=encoder, pooling_onnx=pooling,
        input_names=encoder_input_names(exported.facts), target="container-gpu",
    )  # fmt: skip
    assert _steps(tmp_path, MODEL) == [f"{MODEL}-tokenizer", f"{MODEL}-encoder", f"{MODEL}-pooling"]
    config = parse_config((tmp_path / f"{MODEL}-encoder/config.pbtxt").read_text())
    assert [o.name for o in config.output] == ["last_hidden_state"] and "pooling_onnx_file" not in config.parameters
    assert [i.name for i in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert not any(i.optional for i in config.input) and "tokenizer_file" not in config.parameters
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


def _text_input(texts: list[str]) -> grpcclient.InferInput:
    data = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    tensor = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def _int64_input(name: str, value: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), "INT64")
    tensor.set_data_from_numpy(value)
    return tensor


def _executions(client: grpcclient.InferenceServerClient, model: str) -> int:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return sum(int(s.get("execution_count", 0)) for s in stats)


def test_served_vectors_equal_the_three_step_chain(exported: ExportResult, triton: TritonOptions) -> None:
    """Through the real tritonserver: the one-step ensembles' vectors and counts equal tokenizer-then-encoder-then-
    pooling within 1e-6 (text and token ids), and neither the tokenizer nor the pooling model runs for them."""
    tokenizer, encoder, pooling = _graphs(exported)
    pipeline = OnnxPipeline(tokenizer, encoder, pooling, exported.facts, threads=1)
    expected = pipeline.embed(TEXTS)
    batch, _ = pipeline.hidden_states(TEXTS)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    before = {m: _executions(client, f"{MODEL}-{m}") for m in ("tokenizer", "pooling")}
    served = client.infer(MODEL, [_text_input(TEXTS)])
    assert served.as_numpy("EMBEDDING").shape == expected.shape
    assert float(np.abs(served.as_numpy("EMBEDDING") - expected).max()) <= 1e-6
    assert served.as_numpy("TOKEN_COUNT").ravel().tolist() == batch.token_count.tolist()
    assert served.as_numpy("FULL_TOKEN_COUNT").ravel().tolist() == batch.full_token_count.tolist()
    # the token-id ensemble: the texts' own ids (special tokens added by the encoder step) give the same vectors
    ids = np.full((len(TEXTS), batch.input_ids.shape[1]), -1, dtype=np.int64)
    for r, n in enumerate(batch.token_count):
        ids[r, :n] = batch.input_ids[r, :n]
    by_ids = client.infer(f"{MODEL}-ids", [_int64_input("TOKEN_IDS", ids)]).as_numpy("EMBEDDING")
    assert float(np.abs(by_ids - expected).max()) <= 1e-6
    assert {m: _executions(client, f"{MODEL}-{m}") for m in ("tokenizer", "pooling")} == before


def test_encoder_still_takes_the_tokenizers_ids(exported: ExportResult, triton: TritonOptions) -> None:
    """The proxy's token-level routes call `-tokenizer`, then `-encoder` with its ids: the hidden states are the
    ONNX encoder's own, at the tokenizer's padded width."""
    tokenizer, encoder, pooling = _graphs(exported)
    batch, hidden = OnnxPipeline(tokenizer, encoder, pooling, exported.facts, threads=1).hidden_states(TEXTS[:3])
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    tokenized = client.infer(f"{MODEL}-tokenizer", [_text_input(TEXTS[:3])])
    feeds = [
        _int64_input(name, tokenized.as_numpy(name.upper()))
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    wanted = [grpcclient.InferRequestedOutput(n) for n in ("last_hidden_state", "TOKEN_COUNT")]
    answer = client.infer(f"{MODEL}-encoder", feeds, outputs=wanted)
    states = answer.as_numpy("last_hidden_state")
    assert states.shape == hidden.shape
    mask = batch.attention_mask.astype(bool)
    assert float(np.abs(states[mask] - hidden[mask]).max()) <= 1e-5
    assert answer.as_numpy("TOKEN_COUNT").ravel().tolist() == batch.token_count.tolist()
    assert answer.as_numpy("last_hidden_state") is not None and answer.as_numpy("embedding") is None


def test_encoder_refuses_bad_input_with_invalid_argument(triton: TritonOptions) -> None:
    """Bad input to the folded step fails that request with INVALID_ARG (HTTP 400, gRPC 3), never the model."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    not_utf8 = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    not_utf8.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=object))
    ids = np.array([[101, 102]], dtype=np.int64)
    cases = [
        (MODEL, [not_utf8], "not valid UTF-8"),
        (f"{MODEL}-ids", [_int64_input("TOKEN_IDS", np.array([[101, 10**9]], dtype=np.int64))], "outside the vocab"),
        (f"{MODEL}-encoder", [_text_input(["x"]), _int64_input("input_ids", ids)], "send exactly one of"),
        (f"{MODEL}-encoder", [_int64_input("input_ids", ids)], "missing encoder input attention_mask"),
    ]
    for model, inputs, message in cases:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model, inputs)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT" and message in raised.value.message()
    assert client.infer(MODEL, [_text_input(["still serving"])]).as_numpy("EMBEDDING").shape == (1, 384)


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
