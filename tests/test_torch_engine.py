"""The torch engine (issue 15): the encoder step as a transformers model in the Python backend, batched by the
same token-budget runner as onnxruntime, equal to the ONNX encoder and the PyTorch reference."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bge_triton.client import EmbeddingClient
from bge_triton.export.checkpoint import MINILM_ID, minilm_dir
from bge_triton.export.exporter import ExportResult, export_model
from bge_triton.export.model_configs import parse_config
from bge_triton.export.onnx_export import encoder_input_names
from bge_triton.export.parity import TorchReference
from bge_triton.launcher import TritonOptions, TritonServer, free_port
from bge_triton.triton_models.onnx_runner import PaddedOnnxRunner
from bge_triton.triton_models.tokenizer import TextTokenizer
from bge_triton.triton_models.torch_runner import torch_runner

TEXTS = ["short", "a somewhat longer sentence about deploying embedding models", "今天天气很好", "word " * 300]


def test_torch_runner_equals_the_onnx_encoder(exported: ExportResult) -> None:
    repo = exported.ensemble_dir.parent
    name = exported.facts.name
    tokenizer = TextTokenizer(repo / f"{name}-tokenizer/1/tokenizer.json", exported.facts.max_tokens, 0)
    names = encoder_input_names(exported.facts)
    # Three requests of different padded widths, as Triton's ragged batch hands them over.
    batches = [tokenizer.encode(TEXTS[:2]), tokenizer.encode(TEXTS[2:3]), tokenizer.encode(TEXTS[3:])]
    feeds = [
        {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "token_type_ids": b.token_type_ids}
        for b in batches
    ]
    feeds = [{n: f[n] for n in names} for f in feeds]
    onnx = PaddedOnnxRunner(repo / f"{name}-encoder/1/model.onnx", max_batch_tokens=512)
    torch = torch_runner(minilm_dir(), names, max_batch_tokens=512, pad_values={"input_ids": 0})
    expected = onnx.run(feeds)
    got = torch.run(feeds)
    assert torch.last_sub_batches == onnx.last_sub_batches and len(torch.last_sub_batches) > 1
    for want, have, batch in zip(expected, got, batches, strict=True):
        assert have["last_hidden_state"].shape == want["last_hidden_state"].shape
        mask = batch.attention_mask.astype(bool)
        diff = np.abs(have["last_hidden_state"][mask] - want["last_hidden_state"][mask]).max()
        assert diff < 1e-3, diff


def test_engine_options_are_checked_before_any_work() -> None:
    from bge_triton.export.torch_engine import EngineOptionsError, check_engine_options

    assert check_engine_options("torch", "cpu", "fp32", "local", m3=False) == "fp32"
    assert check_engine_options("torch", "cuda", "fp32", "local", m3=False) == "fp16"
    assert check_engine_options("onnxruntime", "cpu", "int8", "local", m3=False) == "int8"
    assert check_engine_options("onnxruntime", "cuda", "fp16", "local", m3=False) == "fp16"
    for args, message in (
        (("onnxruntime", "cuda", "fp32", "container-gpu", False), "--device cuda is for the local target"),
        (("torch", "cpu", "fp32", "container-gpu", False), "use --target local"),
        (("torch", "cpu", "int8", "local", False), "int8 is ONNX-only"),
        (("torch", "cpu", "fp32", "local", True), "bge-m3"),
        (("tensorrt", "cpu", "fp32", "local", False), "unknown engine"),
    ):
        with pytest.raises(EngineOptionsError, match=re.escape(message)):
            check_engine_options(*args)


def test_torch_engine_serves_the_same_vectors_through_triton(tmp_path: Path, reference: TorchReference) -> None:
    """`export --engine torch` on the CPU: the encoder folder holds the runner and the checkpoint (no graph), and
    the ensemble served by a real tritonserver equals the PyTorch reference."""
    result = export_model(MINILM_ID, tmp_path / "repo", name="minilm-torch", engine="torch")
    assert result.parity.passed and result.parity.min_cosine >= 0.9999
    encoder = tmp_path / "repo/minilm-torch-encoder"
    config = parse_config((encoder / "config.pbtxt").read_text())
    assert config.backend == "python" and config.parameters["engine"].string_value == "torch"
    assert config.parameters["device"].string_value == "cpu" and config.parameters["dtype"].string_value == "fp32"
    assert all(i.allow_ragged_batch for i in config.input) and config.dynamic_batching.max_queue_delay_microseconds >= 0
    files = {p.relative_to(encoder / "1").as_posix() for p in (encoder / "1").rglob("*") if p.is_file()}
    assert {"model.py", "onnx_runner.py", "checkpoint/config.json", "checkpoint/model.safetensors"} <= files
    assert not any(name.endswith(".onnx") for name in files)
    pooling = tmp_path / "repo/minilm-torch-pooling"
    pooling_config = parse_config((pooling / "config.pbtxt").read_text())
    assert {k: v.string_value for k, v in pooling_config.parameters.items()} == {
        "pooling": "mean", "normalize": "true", "engine": "torch", "max_batch_tokens": "16384",
    }  # fmt: skip
    assert sorted(p.name for p in (pooling / "1").iterdir()) == ["model.py", "onnx_runner.py"]  # no graph
    options = TritonOptions(
        repository=tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    texts = [*TEXTS, *[f"query {i}: 部署向量模型" for i in range(20)]]
    with (
        TritonServer(options, log_file=tmp_path / "tritonserver.log"),
        EmbeddingClient(options.grpc_url, model="minilm-torch") as client,
    ):
        served = client.embed(texts)
    cos = (served * reference.embed(texts)).sum(axis=1)
    assert served.shape == (len(texts), 384) and cos.min() >= 0.9999, cos.min()


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "lasttoken"])
@pytest.mark.parametrize("normalize", [True, False])
def test_numpy_pooling_equals_the_torch_pooler(mode: str, normalize: bool) -> None:
    """The torch engine's pooling step is the Pooler the ONNX pooling graph is exported from, in numpy."""
    import torch

    from bge_triton.export.onnx_export import Pooler
    from bge_triton.triton_models.numpy_pooling import numpy_pooling_runner

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 16)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6], dtype=np.int64)
    expected = Pooler(mode, normalize)(torch.from_numpy(hidden), torch.from_numpy(mask)).numpy()
    # Two requests of different widths, as the ragged batch hands them over.
    runner = numpy_pooling_runner(mode, normalize)
    answers = runner.run(
        [
            {"last_hidden_state": hidden[:2], "attention_mask": mask[:2]},
            {"last_hidden_state": hidden[2:, :3], "attention_mask": mask[2:, :3]},
        ]
    )
    got = np.concatenate([a["embedding"] for a in answers])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_onnxruntime_provider_selection() -> None:
    """--device cuda with the onnxruntime engine: TensorRT and CUDA where onnxruntime-gpu has them, the CPU provider
    last; a clear error where it has neither (this machine's onnxruntime)."""
    import onnxruntime as ort

    from bge_triton.triton_models.onnx_runner import select_providers

    cpu = ["CPUExecutionProvider"]
    assert select_providers("cpu", ["CUDAExecutionProvider", *cpu]) == cpu
    assert select_providers("cuda", ["CUDAExecutionProvider", *cpu], device_id=1) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider",
    ]  # fmt: skip
    assert [p[0] if isinstance(p, tuple) else p for p in select_providers(
        "cuda", ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"])] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider",
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="pip install onnxruntime-gpu"):
        select_providers("cuda", ort.get_available_providers() if "CUDAExecutionProvider" not in
                         ort.get_available_providers() else cpu)  # fmt: skip
    with pytest.raises(ValueError, match="unknown device"):
        select_providers("tpu", cpu)


def test_onnx_encoder_on_cuda_gets_a_gpu_instance_group(exported: ExportResult) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    from bge_triton.export.model_configs import BatchingOptions, encoder_config
    from bge_triton.export.torch_engine import place_onnx_encoder

    opts = BatchingOptions(encoder_instances=2)
    names = encoder_input_names(exported.facts)
    gpu = place_onnx_encoder(encoder_config(exported.facts, "local", opts, names), "cuda")
    assert [(g.kind, g.count) for g in gpu.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert gpu.parameters["device"].string_value == "cuda" and gpu.backend == "python"
    cpu = place_onnx_encoder(encoder_config(exported.facts, "local", opts, names), "cpu")
    assert [g.kind for g in cpu.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
