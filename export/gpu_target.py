"""What the `container-gpu` target needs that the local one does not: fixed padding widths, a token budget that
holds without ragged batching, two encoder instances, and (with TensorRT) shape profiles and warm-up.

Triton's onnxruntime backend cannot batch requests of different shapes: the dynamic batcher sends the pending
batch at the first request whose shape differs (no `allow_ragged_batch` there). A tokenizer that pads each
request to its own longest text therefore makes most executions hold one request. Padding to a few fixed
widths (`pad_buckets`: 16, 32, 64, ... up to the window) gives requests of similar lengths the same shape.

The local target's runner splits a merged batch into sub-batches of at most `max_batch_tokens` padded tokens;
the onnxruntime backend runs a merged batch as one call, so on the GPU target the budget bounds the batch size
instead: rows x width <= budget for the widest bucket (the window), e.g. bge-m3's 8192-token rows at most 8 per
execution under the default 65536, where 64 could run a GPU out of memory.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from bge_triton.triton_models.onnx_runner import DEFAULT_MAX_BATCH_TOKENS

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as mc

    from .model_configs import BatchingOptions, Target

log = logging.getLogger("bge_triton.export")

SMALLEST_BUCKET = 16
GPU_MAX_BATCH_TOKENS = 65_536  # rows x padded width per encoder execution on the GPU target
GPU_ENCODER_INSTANCES = 2  # one instance computes while the other's batch is gathered and copied
# The encoder's dynamic-batching wait: none on local, where one encoder instance batches the requests that queued
# while it ran (a lone RAG query is not held back; issue 19), 2 ms on the GPU, where the tokenizer's wait lets
# requests share a padded width.
LOCAL_QUEUE_DELAY_US = 0
GPU_QUEUE_DELAY_US = 2000
TRT_CACHE_PATH = "/trt-cache"  # a volume in compose and Kubernetes: engines survive restarts


class ExportOptionsError(ValueError):
    """Options that cannot work together on the chosen target."""


def check_export_options(precision: str, target: str, tensorrt: bool) -> None:
    """Refuse combinations that would load but serve badly, before any work is done."""
    if tensorrt and target != "container-gpu":
        raise ExportOptionsError("--tensorrt needs --target container-gpu (Triton's onnxruntime backend on a GPU)")
    if precision == "int8" and target == "container-gpu":
        raise ExportOptionsError(
            "--precision int8 is for CPUs: its dynamically quantised MatMuls (MatMulInteger, DynamicQuantizeLinear) "
            "have no fast CUDA kernels and fall back to the CPU inside a GPU model; use --precision fp16 on "
            "--target container-gpu"
        )


def default_buckets(max_tokens: int) -> tuple[int, ...]:
    """16, 32, 64, ... doubling below the window, then the window itself (512: 16..256, 512)."""
    buckets: list[int] = []
    width = SMALLEST_BUCKET
    while width < max_tokens:
        buckets.append(width)
        width *= 2
    return (*buckets, max_tokens)


def resolve_options(opts: BatchingOptions, target: Target, max_tokens: int) -> BatchingOptions:
    """Fill the options left unset (None) with the target's defaults; on the GPU target cap the batch size so
    that max_batch_size x window stays within the token budget."""
    gpu = target == "container-gpu"
    buckets = opts.pad_buckets
    if buckets is None:
        buckets = default_buckets(max_tokens) if gpu else ()
    buckets = tuple(sorted({min(b, max_tokens) for b in buckets if b > 0}))
    if buckets and buckets[-1] < max_tokens:
        buckets = (*buckets, max_tokens)
    instances = opts.encoder_instances or (GPU_ENCODER_INSTANCES if gpu else 1)
    budget = opts.max_batch_tokens or (GPU_MAX_BATCH_TOKENS if gpu else DEFAULT_MAX_BATCH_TOKENS)
    batch = opts.max_batch_size
    if gpu:
        batch = min(batch, max(1, budget // max_tokens))
        if batch < opts.max_batch_size:
            log.info(
                "container-gpu: max batch size %d (was %d) so that rows x %d-token window <= %d tokens per execution",
                batch, opts.max_batch_size, max_tokens, budget,
            )  # fmt: skip
    delay = opts.max_queue_delay_us
    if delay is None:
        delay = GPU_QUEUE_DELAY_US if gpu else LOCAL_QUEUE_DELAY_US
    return dataclasses.replace(
        opts, pad_buckets=buckets, encoder_instances=instances, max_batch_tokens=budget, max_batch_size=batch,
        max_queue_delay_us=delay,
    )  # fmt: skip


def tensorrt_profile(input_names: list[str], buckets: tuple[int, ...], max_batch_size: int) -> dict[str, str]:
    """TensorRT optimisation-profile parameters of the onnxruntime backend: one profile from 1 x smallest bucket
    to max_batch_size x window, tuned for a mid-size batch at 128 tokens, so one engine covers every shape the
    tokenizer can produce and is never rebuilt for a new one."""
    widest, narrowest = buckets[-1], buckets[0]
    opt_width = min((b for b in buckets if b >= 128), default=widest)
    opt_rows = max(1, min(max_batch_size, 16))

    def shapes(rows: int, width: int) -> str:
        return ",".join(f"{name}:{rows}x{width}" for name in input_names)

    return {
        "trt_profile_min_shapes": shapes(1, narrowest),
        "trt_profile_opt_shapes": shapes(opt_rows, opt_width),
        "trt_profile_max_shapes": shapes(max_batch_size, widest),
    }


def add_tensorrt(config: mc.ModelConfig, opts: BatchingOptions, input_names: list[str]) -> None:
    """TensorRT execution accelerator with profiles, engine cache on a volume, and warm-up at the profile's
    smallest and largest shapes so the engine is built (or loaded from the cache) before the model is READY."""
    from tritonclient.grpc import model_config_pb2 as mc

    assert opts.pad_buckets, "TensorRT profiles need pad buckets"
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    params = {
        "precision_mode": "FP16" if opts.tensorrt_fp16 else "FP32",
        "max_workspace_size_bytes": str(4 << 30),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": TRT_CACHE_PATH,
        **tensorrt_profile(input_names, opts.pad_buckets, opts.max_batch_size),
    }
    for key, value in params.items():
        accelerator.parameters[key] = value
    for rows, width in ((1, opts.pad_buckets[0]), (opts.max_batch_size, opts.pad_buckets[-1])):
        warmup = config.model_warmup.add(name=f"tensorrt-{rows}x{width}", batch_size=rows)
        for name in input_names:
            # zeros: the pad id and an all-padding mask, valid for every vocabulary
            warmup.inputs[name].CopyFrom(mc.ModelWarmup.Input(data_type=mc.TYPE_INT64, dims=[width], zero_data=True))
