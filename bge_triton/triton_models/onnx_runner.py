"""Triton Python-backend model: runs an ONNX graph with onnxruntime (the `local` target).

The NGC tritonserver image runs `model.onnx` with its own `onnxruntime_onnx` backend; outside the
container that backend does not exist, so export copies this file to `<model>/1/model.py` beside
the very same `model.onnx` (and its `model.onnx.data` when the weights live outside the graph). It needs
only numpy and onnxruntime.

The model's inputs are marked `allow_ragged_batch`, so Triton's dynamic batcher hands over
requests of different sequence lengths together. `PaddedOnnxRunner.run` splits them into rows, sorts
the rows by their real length (the `attention_mask` input's, else their request's padded width) and runs
them in sub-batches under a token budget: rows x padded length <= `max_batch_tokens` (TEI's
`--max-batch-tokens`; a single longer row runs alone), a row joining a sub-batch only when that does not
pad it to more than twice its length (rows of up to 64 tokens always share). With an 8192-token window,
one long text no longer pads every short text of the batch to its length. Each sub-batch is padded along axis 1 (every
tensor whose ONNX axis 1 is named "sequence") to its own longest row; the outputs are scattered back
to their requests, each sequence output at its request's own padded width; positions past a row's real
length (masked anyway) are zeros, so a row's outputs do not depend on what it was batched with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SEQUENCE_AXIS_NAME = "sequence"
LENGTH_INPUT = "attention_mask"  # a row's real length: its last non-zero position in this input, plus one
DEFAULT_MAX_BATCH_TOKENS = 16384  # rows x padded length per onnxruntime call; 0 or less: one call for the batch
# A row joins a sub-batch only when the sub-batch's longest row is at most PAD_RATIO times its length, or at most
# SHORT_ROWS tokens (padding short rows costs little): a short text is never padded to a long one's length, even
# when the budget would allow it (attention grows with the square of the padded length).
PAD_RATIO = 2
SHORT_ROWS = 64


@dataclass(frozen=True)
class TensorInfo:
    """A named tensor as onnxruntime's session describes it (the runner reads `.name` and `.shape`): what another
    engine's session (torch_runner.py, numpy_pooling.py) reports."""

    name: str
    shape: list[Any] = field(default_factory=lambda: ["batch", SEQUENCE_AXIS_NAME])


@dataclass(frozen=True)
class RowRef:
    """One row of one request: where it comes from and how many real tokens it has."""

    request: int
    row: int
    length: int


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preferred first, where installed

# What onnxruntime's intra-op threads do when they run out of work. `on` is onnxruntime's default: they spin, for up
# to ~1 s after a run on Intel hosts, which on a small host takes the cores the tokenizer, Triton's gRPC threads and
# the proxy need for the very same request (a lone 16-token query through Triton: p50 ~22 ms spinning, ~14.5 ms
# not, on 2 cores). `off`: never spin (each parallel section then wakes its threads). `run` (default): spin inside
# a run, stop at its end (session.force_spinning_stop): a lone query as fast as `off`, onnxruntime's own behaviour
# inside a run (docs/benchmarks.md).
SPINNING_MODES = ("off", "run", "on")
DEFAULT_SPINNING = "run"


def select_providers(device: str, available: list[str], device_id: int = 0) -> list[str | tuple[str, dict]]:
    """onnxruntime execution providers for `device`: cpu -> the CPU provider; cuda -> TensorRT and CUDA where this
    onnxruntime has them (onnxruntime-gpu), on GPU `device_id`, the CPU provider last for what they cannot run."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise ValueError(f"unknown device {device!r} (cpu, cuda)")
    gpu = [(p, {"device_id": device_id}) for p in GPU_PROVIDERS if p in available]
    if not gpu:
        raise RuntimeError(
            f"device cuda needs onnxruntime with the CUDA execution provider (pip install onnxruntime-gpu); this "
            f"onnxruntime has {', '.join(available)}"
        )
    return [*gpu, "CPUExecutionProvider"]


def spinning_mode(configured: str | None = None) -> str:
    """The spinning mode: $BGE_TRITON_ORT_SPINNING, else `configured` (a config parameter), else the default."""
    mode = (os.environ.get("BGE_TRITON_ORT_SPINNING") or configured or DEFAULT_SPINNING).strip().lower()
    if mode not in SPINNING_MODES:
        raise ValueError(f"onnxruntime spinning {mode!r}: one of {', '.join(SPINNING_MODES)}")
    return mode


def onnx_session(
    onnx_path: str | Path, *, threads: int = 0, device: str = "cpu", device_id: int = 0, spinning: str | None = None
) -> Any:
    """An onnxruntime session on `onnx_path`: all graph optimisations, `threads` intra-op threads (0: onnxruntime's
    default), one inter-op thread, the providers of `device`, intra-op threads spinning as `spinning_mode(spinning)`
    says."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    mode = spinning_mode(spinning)
    if mode == "off":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif mode == "run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    providers = select_providers(device, ort.get_available_providers(), device_id)
    return ort.InferenceSession(str(onnx_path), options, providers=providers)


class PooledSession:
    """An encoder session and the pooling after it as one session (the `local` target's encoder step): the
    encoder's outputs plus the pooling's (`embedding`), pooled on the same sub-batch right after the encoder ran,
    so a request makes one Python-backend hop fewer. The pooling reads its inputs from the encoder's outputs
    (`last_hidden_state`, as float32) and, for the rest, from the encoder's feeds (`attention_mask`: the
    sub-batch's, zero past each row's length, so padding never reaches a pooled vector). It runs only when one of
    its outputs is asked for; the encoder runs for both."""

    def __init__(self, encoder: Any, pooling: Any):
        self.encoder = encoder
        self.pooling = pooling
        self._encoded = [o.name for o in encoder.get_outputs()]
        self._pooled = [o.name for o in pooling.get_outputs()]
        self._pool_inputs = [i.name for i in pooling.get_inputs()]

    def get_inputs(self) -> list[Any]:
        return self.encoder.get_inputs()

    def get_outputs(self) -> list[Any]:
        return [*self.encoder.get_outputs(), *self.pooling.get_outputs()]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        wanted = list(output_names) if output_names else [*self._encoded, *self._pooled]
        pool = any(name in self._pooled for name in wanted)
        encoded = [n for n in self._encoded if n in wanted or (pool and n in self._pool_inputs)]
        values = dict(zip(encoded, self.encoder.run(encoded, feeds), strict=True))
        if pool:
            pool_feeds = {
                n: values[n].astype(np.float32, copy=False) if n in values else feeds[n] for n in self._pool_inputs
            }
            values.update(zip(self._pooled, self.pooling.run(self._pooled, pool_feeds), strict=True))
        return [values[name] for name in wanted]


def plan_sub_batches(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Row indices grouped into sub-batches, longest rows first: each group's size x its longest length stays
    within `max_batch_tokens` (a row longer than the budget alone), and a row joins a group only when the group's
    longest row is at most `PAD_RATIO` x its length or `SHORT_ROWS` tokens; `max_batch_tokens` <= 0: one group."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if max_batch_tokens <= 0:
        return [order] if order else []
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        over_budget = (len(current) + 1) * longest > max_batch_tokens
        too_short = longest > SHORT_ROWS and max(lengths[index], 1) * PAD_RATIO < longest
        if current and (over_budget or too_short):
            groups.append(current)
            current = []
        if not current:
            longest = max(lengths[index], 1)
        current.append(index)
    if current:
        groups.append(current)
    return groups


class PaddedOnnxRunner:
    def __init__(
        self,
        onnx_path: str | Path,
        *,
        threads: int = 0,
        pad_values: dict[str, float] | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        session: Any = None,
        device: str = "cpu",
        device_id: int = 0,
        spinning: str | None = None,
    ):
        """`session`: anything with onnxruntime's `get_inputs()`, `get_outputs()` and `run(names, feeds)` (the
        torch engine's `TorchEncoderSession`); None: an onnxruntime session on `onnx_path` (`spinning`: see
        `spinning_mode`)."""
        if session is None:
            session = onnx_session(onnx_path, threads=threads, device=device, device_id=device_id, spinning=spinning)
        self.session = session
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._seq_inputs = {i.name for i in self.session.get_inputs() if _has_sequence_axis(i.shape)}
        self._seq_outputs = {o.name for o in self.session.get_outputs() if _has_sequence_axis(o.shape)}
        self._pad_values = pad_values or {}
        self.max_batch_tokens = max_batch_tokens
        # (rows, padded length) of each onnxruntime call made by the last `run` (what the token budget chose).
        self.last_sub_batches: list[tuple[int, int]] = []

    def run(
        self, requests: list[dict[str, np.ndarray]], outputs: list[str] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Run all requests' rows in token-budgeted sub-batches; returns each request's outputs (`outputs`: only
        these, in the session's order; None: all)."""
        names = self.output_names if outputs is None else [n for n in self.output_names if n in outputs]
        sizes = [next(iter(feeds.values())).shape[0] for feeds in requests]
        widths = [self._sequence_length(feeds) for feeds in requests]
        rows = [
            RowRef(r, i, length)
            for r, feeds in enumerate(requests)
            for i, length in enumerate(self._row_lengths(feeds, widths[r]))
        ]
        self.last_sub_batches = []
        if not rows:
            return self._run_whole(requests, sizes, widths, names)
        answers: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for group in plan_sub_batches([row.length for row in rows], self.max_batch_tokens):
            members = [rows[i] for i in group]
            padded = max(row.length for row in members)
            feeds = {name: self._gather(name, requests, members, padded) for name in self.input_names}
            self.last_sub_batches.append((len(members), padded))
            results = self.session.run(names, feeds)
            for name, value in zip(names, results, strict=True):
                for j, row in enumerate(members):
                    self._scatter(answers, name, value[j], row, sizes, widths)
        return answers

    def _row_lengths(self, feeds: dict[str, np.ndarray], width: int) -> list[int]:
        mask = feeds.get(LENGTH_INPUT) if LENGTH_INPUT in self._seq_inputs else None
        size = next(iter(feeds.values())).shape[0]
        if mask is None or mask.ndim != 2 or width == 0:
            return [width] * size
        nonzero = mask != 0
        last = width - np.argmax(nonzero[:, ::-1], axis=1)  # one past the last real position
        return [int(n) if any_real else 1 for n, any_real in zip(last, nonzero.any(axis=1), strict=True)]

    def _gather(self, name: str, requests: list[dict[str, np.ndarray]], members: list[RowRef], padded: int):
        first = requests[members[0].request][name]
        if name not in self._seq_inputs:
            return np.stack([requests[row.request][name][row.row] for row in members])
        out = np.full((len(members), padded, *first.shape[2:]), self._pad_values.get(name, 0), dtype=first.dtype)
        for j, row in enumerate(members):
            source = requests[row.request][name][row.row]
            keep = min(padded, source.shape[0])
            out[j, :keep] = source[:keep]
        return out

    def _scatter(
        self,
        answers: list[dict[str, np.ndarray]],
        name: str,
        value: np.ndarray,
        row: RowRef,
        sizes: list[int],
        widths: list[int],
    ) -> None:
        answer = answers[row.request]
        if name not in answer:
            shape = (sizes[row.request], widths[row.request], *value.shape[1:]) if name in self._seq_outputs else (
                sizes[row.request], *value.shape)  # fmt: skip
            answer[name] = np.zeros(shape, dtype=value.dtype)
        if name in self._seq_outputs:
            keep = min(value.shape[0], widths[row.request], row.length)
            answer[name][row.row, :keep] = value[:keep]
        else:
            answer[name][row.row] = value

    def _run_whole(
        self, requests: list[dict[str, np.ndarray]], sizes: list[int], widths: list[int], names: list[str]
    ) -> list[dict[str, np.ndarray]]:
        """One padded call for the whole batch (a batch without rows)."""
        longest = max(widths) if widths else 0
        merged: dict[str, np.ndarray] = {}
        for name in self.input_names:
            parts = [feeds[name] for feeds in requests]
            if name in self._seq_inputs:
                parts = [self._pad(name, part, longest) for part in parts]
            merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        results = self.session.run(names, merged)
        answers: list[dict[str, np.ndarray]] = []
        start = 0
        for size, length in zip(sizes, widths, strict=True):
            answer = {}
            for name, value in zip(names, results, strict=True):
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


class RunnerModel:
    """A Triton Python model around a `PaddedOnnxRunner`: every request's inputs in, the runner over all of them,
    each request's outputs back in the config's dtypes. Subclasses build the runner (`make_runner`); `what` names
    the engine in error messages."""

    what = "onnxruntime"

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self._runner = self.make_runner(args, params, Path(args["model_repository"]) / args["model_version"])
        self._output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config.get("output", [])
        }

    def make_runner(self, args: dict[str, str], params: dict[str, str], version_dir: Path) -> PaddedOnnxRunner:
        raise NotImplementedError

    def execute(self, requests: list) -> list:
        pb = self._pb
        names = self._runner.input_names
        feeds = [{n: pb.get_input_tensor_by_name(request, n).as_numpy() for n in names} for request in requests]
        return self.run_requests(requests, feeds)

    def run_requests(
        self, requests: list, feeds: list[dict[str, np.ndarray]], extras: list[dict[str, np.ndarray]] | None = None
    ) -> list:
        """Run every request's `feeds` together; answer each request with what it asks for of the runner's outputs
        and of its `extras` (tensors computed before the run: text_encoder.py's token counts)."""
        pb = self._pb
        if not requests:
            return []
        # Only what the requests ask for is computed and sent: an ensemble step asks for the outputs it maps (the
        # dense ensemble takes the encoder's `embedding`, not its [batch, seq, dim] hidden states).
        wanted = [self._requested(request) for request in requests]
        union = set().union(*wanted)
        try:
            answers = self._runner.run(feeds, [n for n in self._runner.output_names if n in union])
        except Exception as exc:  # answer the batch with the error rather than crash the stub
            return [pb.InferenceResponse(error=pb.TritonError(f"{self.what} failed: {exc}")) for _ in requests]
        return [
            pb.InferenceResponse(
                output_tensors=[
                    pb.Tensor(name, np.ascontiguousarray(value, dtype=self._output_dtypes.get(name, value.dtype)))
                    for name, value in (answer | extra).items()
                    if name in want
                ]
            )
            for answer, extra, want in zip(answers, extras or [{}] * len(requests), wanted, strict=True)
        ]

    def _invalid(self, message: str) -> Any:  # pb_utils.TritonError with code INVALID_ARG (gRPC 3, HTTP 400)
        pb = self._pb
        code = getattr(pb.TritonError, "INVALID_ARG", None)
        return pb.TritonError(message) if code is None else pb.TritonError(message, code)

    def _requested(self, request: Any) -> set[str]:
        """The outputs `request` asks for; all of the config's where it names none."""
        asked = getattr(request, "requested_output_names", None)
        names = set(asked()) if asked is not None else set()
        return names or set(self._output_dtypes) or set(self._runner.output_names)


def budget_param(params: dict[str, str]) -> int:
    """The token budget per call: $BGE_TRITON_MAX_BATCH_TOKENS, else the config parameter, else the default."""
    budget = os.environ.get("BGE_TRITON_MAX_BATCH_TOKENS") or params.get("max_batch_tokens")
    return int(budget) if budget else DEFAULT_MAX_BATCH_TOKENS


class TritonPythonModel(RunnerModel):
    def make_runner(self, args: dict[str, str], params: dict[str, str], version_dir: Path) -> PaddedOnnxRunner:
        # intra-op threads: the config parameter, else $BGE_TRITON_ORT_THREADS, else onnxruntime's default
        threads = int(params.get("intra_op_threads", "0")) or int(os.environ.get("BGE_TRITON_ORT_THREADS", "0"))
        device = params.get("device", "cpu")  # cuda: the GPU of this instance (instance group KIND_GPU)
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        spinning = params.get("ort_spinning")  # run (default), off, on: see SPINNING_MODES
        session = onnx_session(
            version_dir / params.get("onnx_file", "model.onnx"),
            threads=threads, device=device, device_id=device_id, spinning=spinning,
        )  # fmt: skip
        if params.get("pooling_onnx_file"):  # the encoder step with the pooling folded in (export/model_configs.py)
            pooling = onnx_session(version_dir / params["pooling_onnx_file"], threads=1, spinning=spinning)
            session = PooledSession(session, pooling)
        return PaddedOnnxRunner(
            None,
            session=session,
            pad_values={k: float(v) for k, v in json.loads(params.get("pad_values", "{}")).items()},
            max_batch_tokens=budget_param(params),
        )
