"""Triton Python-backend model: the encoder as a `transformers` model in PyTorch (`bge-triton export --engine torch`).

FP16 on CUDA with scaled-dot-product attention (`device: cuda`, instance group KIND_GPU: each instance runs on the
GPU Triton gives it), FP32 on the CPU. The batching is the onnxruntime runner's (`onnx_runner.py`, copied beside
this file): ragged requests split into rows, length-sorted sub-batches under the token budget, outputs scattered
back at each request's own width. `TorchEncoderSession` is what that runner needs of an onnxruntime session.

Parameters: `checkpoint_dir` (the Hugging Face checkpoint copied into the version folder), `device` (cpu | cuda),
`dtype` (fp32 | fp16), `input_names` (JSON list), `max_batch_tokens`, `pad_values` (JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

try:
    from bge_triton.triton_models.onnx_runner import (
        DEFAULT_MAX_BATCH_TOKENS,
        SEQUENCE_AXIS_NAME,
        PaddedOnnxRunner,
        RunnerModel,
        TensorInfo,
        budget_param,
    )
except ImportError:  # copied into a model folder where the package is not installed (the NGC image)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # export copies onnx_runner.py beside this file
    from onnx_runner import (
        DEFAULT_MAX_BATCH_TOKENS,
        SEQUENCE_AXIS_NAME,
        PaddedOnnxRunner,
        RunnerModel,
        TensorInfo,
        budget_param,
    )

OUTPUT_NAME = "last_hidden_state"


class TorchEncoderSession:
    """A transformers encoder behind onnxruntime's session interface: `run(names, feeds) -> [last_hidden_state]`."""

    def __init__(self, checkpoint_dir: str | Path, input_names: list[str], *, device: str = "cpu", dtype: str = "fp32"):
        import torch
        from transformers import AutoModel

        self._torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float16 if dtype == "fp16" else torch.float32
        model = AutoModel.from_pretrained(str(checkpoint_dir), torch_dtype=self.dtype, attn_implementation="sdpa")
        self.model = model.to(self.device).eval()
        self._inputs = [TensorInfo(name) for name in input_names]
        self._outputs = [TensorInfo(OUTPUT_NAME, ["batch", SEQUENCE_AXIS_NAME, "hidden"])]

    def get_inputs(self) -> list[TensorInfo]:
        return self._inputs

    def get_outputs(self) -> list[TensorInfo]:
        return self._outputs

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            tensors = {name: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for name, v in feeds.items()}
            hidden = self.model(**tensors).last_hidden_state
            return [hidden.float().cpu().numpy()]


def torch_runner(
    checkpoint_dir: str | Path,
    input_names: list[str],
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    pad_values: dict[str, float] | None = None,
) -> PaddedOnnxRunner:
    session = TorchEncoderSession(checkpoint_dir, input_names, device=device, dtype=dtype)
    return PaddedOnnxRunner(None, session=session, pad_values=pad_values, max_batch_tokens=max_batch_tokens)


class TritonPythonModel(RunnerModel):
    what = "torch encoder"

    def make_runner(self, args: dict[str, str], params: dict[str, str], version_dir: Path) -> PaddedOnnxRunner:
        device = params.get("device", "cpu")
        if device == "cuda":  # the GPU of this instance (instance group KIND_GPU)
            device = f"cuda:{args.get('model_instance_device_id', '0')}"
        return torch_runner(
            version_dir / params.get("checkpoint_dir", "checkpoint"),
            json.loads(params["input_names"]),
            device=device,
            dtype=params.get("dtype", "fp32"),
            max_batch_tokens=budget_param(params),
            pad_values={k: float(v) for k, v in json.loads(params.get("pad_values", "{}")).items()},
        )
