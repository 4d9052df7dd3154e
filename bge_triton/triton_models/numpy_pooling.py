"""Triton Python-backend model: pooling + L2 normalisation in numpy (the torch engine's pooling step).

The same arithmetic as the ONNX pooling graph (sentence-transformers' modes: cls, mean, max, lasttoken; then
optional normalisation, in float32), without onnxruntime, so a torch-engine repository runs where only PyTorch is
installed (a GPU host). `NumpyPoolingSession` has onnxruntime's session interface, so the onnxruntime runner's
ragged batching (`onnx_runner.py`, copied beside this file) drives it as it drives the graph.

Parameters: `pooling` (cls | mean | max | lasttoken), `normalize` (true | false).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

try:
    from bge_triton.triton_models.onnx_runner import SEQUENCE_AXIS_NAME, PaddedOnnxRunner, RunnerModel, TensorInfo
except ImportError:  # copied into a model folder where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from onnx_runner import SEQUENCE_AXIS_NAME, PaddedOnnxRunner, RunnerModel, TensorInfo

POOLING_MODES = ("cls", "mean", "max", "lasttoken")


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """[batch, seq, dim] hidden states and [batch, seq] attention mask -> [batch, dim] float32."""
    hidden = hidden.astype(np.float32, copy=False)
    weights = (mask != 0).astype(np.float32)[:, :, None]
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "mean":
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    elif mode == "max":
        pooled = np.where(weights > 0, hidden, np.float32(-1e9)).max(axis=1)
    elif mode == "lasttoken":
        last = np.maximum((mask != 0).sum(axis=1) - 1, 0)
        pooled = hidden[np.arange(hidden.shape[0]), last]
    else:
        raise ValueError(f"unknown pooling {mode!r} ({', '.join(POOLING_MODES)})")
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(pooled, dtype=np.float32)


class NumpyPoolingSession:
    """`pool` behind onnxruntime's session interface: (last_hidden_state, attention_mask) -> [embedding]."""

    def __init__(self, mode: str, normalize: bool):
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling {mode!r} ({', '.join(POOLING_MODES)})")
        self.mode = mode
        self.normalize = normalize

    def get_inputs(self) -> list[TensorInfo]:
        return [
            TensorInfo("last_hidden_state", ["batch", SEQUENCE_AXIS_NAME, "hidden"]),
            TensorInfo("attention_mask", ["batch", SEQUENCE_AXIS_NAME]),
        ]

    def get_outputs(self) -> list[TensorInfo]:
        return [TensorInfo("embedding", ["batch", "hidden"])]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [pool(feeds["last_hidden_state"], feeds["attention_mask"], self.mode, self.normalize)]


def numpy_pooling_runner(mode: str, normalize: bool) -> PaddedOnnxRunner:
    return PaddedOnnxRunner(None, session=NumpyPoolingSession(mode, normalize))


class TritonPythonModel(RunnerModel):
    what = "pooling"

    def make_runner(self, args: dict[str, str], params: dict[str, str], version_dir: Path) -> PaddedOnnxRunner:
        return numpy_pooling_runner(params["pooling"], params.get("normalize", "true") == "true")
