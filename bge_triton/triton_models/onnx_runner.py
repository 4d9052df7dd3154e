"""Triton Python-backend model: runs an ONNX graph with onnxruntime (the `local` target).

The NGC tritonserver image runs `model.onnx` with its own `onnxruntime_onnx` backend; outside the
container that backend does not exist, so export copies this file to `<model>/1/model.py` beside
the very same `model.onnx`. It needs only numpy and onnxruntime.

The model's inputs are marked `allow_ragged_batch`, so Triton's dynamic batcher hands over
requests of different sequence lengths together. `PaddedOnnxRunner.run` pads them to one length
(axis 1, for every tensor whose ONNX axis 1 is named "sequence"), runs one onnxruntime call over
the whole batch and slices each request's outputs back to its own length.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

SEQUENCE_AXIS_NAME = "sequence"


class PaddedOnnxRunner:
    def __init__(self, onnx_path: str | Path, *, threads: int = 0, pad_values: dict[str, float] | None = None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._seq_inputs = {i.name for i in self.session.get_inputs() if _has_sequence_axis(i.shape)}
        self._seq_outputs = {o.name for o in self.session.get_outputs() if _has_sequence_axis(o.shape)}
        self._pad_values = pad_values or {}

    def run(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """One onnxruntime call for all requests; returns each request's outputs."""
        sizes = [next(iter(feeds.values())).shape[0] for feeds in requests]
        lengths = [self._sequence_length(feeds) for feeds in requests]
        longest = max(lengths) if lengths else 0
        merged: dict[str, np.ndarray] = {}
        for name in self.input_names:
            parts = [feeds[name] for feeds in requests]
            if name in self._seq_inputs:
                parts = [self._pad(name, part, longest) for part in parts]
            merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        results = self.session.run(self.output_names, merged)
        answers: list[dict[str, np.ndarray]] = []
        start = 0
        for size, length in zip(sizes, lengths, strict=True):
            answer = {}
            for name, value in zip(self.output_names, results, strict=True):
                part = value[start : start + size]
                answer[name] = part[:, :length] if name in self._seq_outputs else part
            answers.append(answer)
            start += size
        return answers

    def _sequence_length(self, feeds: dict[str, np.ndarray]) -> int:
        lengths = {feeds[name].shape[1] for name in self._seq_inputs}
        if len(lengths) > 1:
            raise ValueError(f"inputs of one request disagree on the sequence length: {sorted(lengths)}")
        return lengths.pop() if lengths else 0

    def _pad(self, name: str, value: np.ndarray, length: int) -> np.ndarray:
        missing = length - value.shape[1]
        if missing == 0:
            return value
        widths = [(0, 0)] * value.ndim
        widths[1] = (0, missing)
        return np.pad(value, widths, constant_values=self._pad_values.get(name, 0))


def _has_sequence_axis(shape: list) -> bool:
    return len(shape) >= 2 and shape[1] == SEQUENCE_AXIS_NAME


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        # intra-op threads: the config parameter, else $BGE_TRITON_ORT_THREADS, else onnxruntime's default
        threads = int(params.get("intra_op_threads", "0")) or int(os.environ.get("BGE_TRITON_ORT_THREADS", "0"))
        self._runner = PaddedOnnxRunner(
            version_dir / params.get("onnx_file", "model.onnx"),
            threads=threads,
            pad_values={k: float(v) for k, v in json.loads(params.get("pad_values", "{}")).items()},
        )
        self._output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config.get("output", [])
        }

    def execute(self, requests: list) -> list:
        pb = self._pb
        feeds: list[dict[str, np.ndarray]] = []
        for request in requests:
            feeds.append(
                {name: pb.get_input_tensor_by_name(request, name).as_numpy() for name in self._runner.input_names}
            )
        try:
            answers = self._runner.run(feeds)
        except Exception as exc:  # answer the batch with the error rather than crash the stub
            return [pb.InferenceResponse(error=pb.TritonError(f"onnxruntime failed: {exc}")) for _ in requests]
        return [
            pb.InferenceResponse(
                output_tensors=[
                    pb.Tensor(name, np.ascontiguousarray(value, dtype=self._output_dtypes.get(name, value.dtype)))
                    for name, value in answer.items()
                ]
            )
            for answer in answers
        ]
