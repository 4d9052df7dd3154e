"""The config.pbtxt of each model an export writes, as `ModelConfig` protobuf messages (tritonclient's
`model_config_pb2`) written with `text_format`, so every generated config parses as Triton's own schema: the
tokenizer, the `-tokenize` lister, the ONNX steps (encoder, pooling, bge-m3's heads) on either target, bge-m3's
numpy post-processing, and the batching options they share. The ensembles over them: `ensemble_configs.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.model_facts import ModelFacts
from bge_triton.model_names import m3_model_names, model_names

from .gpu_target import add_tensorrt

Target = Literal["local", "container-gpu"]

TARGETS: tuple[str, ...] = ("local", "container-gpu")

POOLING_FILE = "pooling.onnx"  # the pooling graph inside a folded encoder's version folder (local target)

TYPE = {
    "bytes": mc.TYPE_STRING,
    "int64": mc.TYPE_INT64,
    "fp32": mc.TYPE_FP32,
    "bool": mc.TYPE_BOOL,
}


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    # The encoder's wait to fill a batch. None: the target's default (gpu_target.py): 0 on local (a lone query runs
    # at once; requests that arrive while the encoder is busy still batch together), 2 ms on container-gpu.
    max_queue_delay_us: int | None = None
    encoder_instances: int | None = None  # None: 1 on the local target, 2 on container-gpu
    pad_to_multiple_of: int = 8
    # Fixed padding widths: None = the target's default (container-gpu: 16, 32, ... the window; local: none, pad
    # to a multiple of pad_to_multiple_of, since the local runner merges ragged requests). See gpu_target.py.
    pad_buckets: tuple[int, ...] | None = None
    # Opt-in backstop for direct Triton callers: requests past this queue length, or waiting longer than this,
    # are rejected ("Exceeds maximum queue size" / "Request timeout expired"). 0 = no queue policy (the default):
    # Triton's dynamic batcher prefetches the next batch only when a model has no queue policy at all; with one,
    # it waits for a free instance and, when no new request arrives to wake it, sleeps its 500 ms default, which
    # stalled every in-flight request ~0.6 s every few seconds under 8 closed-loop clients (docs/reliability.md).
    # The proxy's admission control (--max-in-flight, 429 + Retry-After) bounds load in front of Triton.
    max_queue_size: int = 0
    queue_timeout_us: int = 0
    # container-gpu only: run the ONNX graph through TensorRT inside Triton's onnxruntime backend
    # (TensorRT execution accelerator; engines are built on the GPU host at load time).
    tensorrt: bool = False
    tensorrt_fp16: bool = True
    # rows x padded length per onnxruntime call (TEI's --max-batch-tokens); None: 16384 local, 65536 GPU. The
    # local runner sorts a dynamic batch's rows by length and runs sub-batches under it, so short texts are not
    # padded to a long one; on container-gpu it caps max_batch_size at budget // window (gpu_target.py).
    max_batch_tokens: int | None = None


@dataclass(frozen=True)
class M3HeadFiles:
    """What export hands over for a bge-m3 checkpoint's heads."""

    sparse_onnx: Path  # last_hidden_state -> token_weights
    colbert_onnx: Path  # last_hidden_state, attention_mask -> colbert_vecs
    colbert_dim: int
    unused_token_ids: tuple[int, ...]  # CLS, EOS, PAD, UNK: never in SPARSE_IDS


def model_input(
    name: str, dtype: str, dims: list[int], *, ragged: bool = False, optional: bool = False
) -> mc.ModelInput:
    t = mc.ModelInput(name=name, data_type=TYPE[dtype], dims=dims)
    if ragged:
        t.allow_ragged_batch = True
    if optional:
        t.optional = True
    return t


def model_output(name: str, dtype: str, dims: list[int]) -> mc.ModelOutput:
    return mc.ModelOutput(name=name, data_type=TYPE[dtype], dims=dims)


def set_params(config: mc.ModelConfig, params: dict[str, str]) -> None:
    for key, value in params.items():
        config.parameters[key].string_value = value


def dynamic_batching(config: mc.ModelConfig, opts: BatchingOptions, *, waits: bool = False) -> None:
    """Dynamic batching, with a queue policy only when one is asked for (BatchingOptions.max_queue_size /
    queue_timeout_us). Only the encoder (`waits`) holds a request back up to `max_queue_delay_us` to fill a batch:
    the steps around it batch what has queued while they were busy and never wait, since their delay would be
    paid once per step by every request (3 x 2 ms at batch 1)."""
    preferred = [b for b in opts.preferred_batch_sizes if b <= opts.max_batch_size]
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = (opts.max_queue_delay_us or 0) if waits else 0
    if opts.max_queue_size or opts.queue_timeout_us:
        policy = config.dynamic_batching.default_queue_policy
        policy.max_queue_size = opts.max_queue_size
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = opts.queue_timeout_us
        policy.allow_timeout_override = True


def tokenizer_params(facts: ModelFacts, opts: BatchingOptions) -> dict[str, str]:
    """What a model that tokenizes reads (`triton_models/tokenizer.py`): the tokenizer and the model's window."""
    return {
        "tokenizer_file": "tokenizer.json",
        "max_tokens": str(facts.max_tokens),
        "pad_token_id": str(facts.pad_token_id),
        "pad_to_multiple_of": str(opts.pad_to_multiple_of),
        "pad_buckets": ",".join(str(b) for b in opts.pad_buckets or ()),
    }


def tokenizer_config(facts: ModelFacts, opts: BatchingOptions) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model_names(facts.name)["tokenizer"], backend="python")
    config.max_batch_size = opts.max_batch_size
    # One of the two per request: the text ensemble sends TEXT, the token-id ensemble TOKEN_IDS.
    config.input.append(model_input("TEXT", "bytes", [1], optional=True))
    config.input.append(model_input("TOKEN_IDS", "int64", [-1], optional=True))
    finish_tokenizer_config(config, facts, opts)
    return config


def finish_tokenizer_config(config: mc.ModelConfig, facts: ModelFacts, opts: BatchingOptions) -> None:
    """What every tokenizer model shares (the text tokenizer and the reranker's pair tokenizer): the encoder's
    inputs and the counts out, batching, one CPU instance, the tokenizer's parameters."""
    for name in ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS"):
        config.output.append(model_output(name, "int64", [-1]))
    config.output.append(model_output("TOKEN_COUNT", "int64", [1]))
    config.output.append(model_output("FULL_TOKEN_COUNT", "int64", [1]))
    # With pad buckets (container-gpu) the requests of one tokenizer execution share a width, and only requests of
    # one shape batch on the onnxruntime backend: there the tokenizer's wait is what fills the encoder's batch.
    dynamic_batching(config, opts, waits=bool(opts.pad_buckets))
    config.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
    set_params(config, tokenizer_params(facts, opts))


def tokenize_config(facts: ModelFacts, opts: BatchingOptions) -> mc.ModelConfig:
    """`<name>-tokenize`: every token of a text, untruncated, with offsets (`triton_models/tokenize_model.py`).
    It carries no model facts, so clients never take it for an embedding model."""
    config = mc.ModelConfig(name=model_names(facts.name)["tokenize"], backend="python")
    config.max_batch_size = opts.max_batch_size
    config.input.append(model_input("TEXT", "bytes", [1], optional=True))  # TEXT, or DECODE_IDS (TEI's /decode)
    config.input.append(model_input("ADD_SPECIAL_TOKENS", "bool", [1], optional=True))
    config.input.append(model_input("DECODE_IDS", "int64", [-1], optional=True))
    config.input.append(model_input("SKIP_SPECIAL_TOKENS", "bool", [1], optional=True))
    config.output.append(model_output("DECODED", "bytes", [1]))
    config.output.append(model_output("TOKEN_IDS", "int64", [-1]))
    config.output.append(model_output("TOKEN_OFFSETS", "int64", [-1, 2]))
    config.output.append(model_output("TOKEN_SPECIAL", "bool", [-1]))
    config.output.append(model_output("TOKENS", "bytes", [-1]))
    config.output.append(model_output("TOKEN_COUNT", "int64", [1]))
    dynamic_batching(config, opts)
    config.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
    set_params(config, {"tokenizer_file": "tokenizer.json", "window": str(facts.max_tokens)})
    return config


def onnx_model_config(
    name: str,
    target: Target,
    opts: BatchingOptions,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    pad_values: dict[str, int],
    instances: int,
    tensorrt: bool = False,
    waits: bool = False,
) -> mc.ModelConfig:
    local = target == "local"
    config = mc.ModelConfig(name=name)
    if local:
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
    config.max_batch_size = opts.max_batch_size
    config.input.extend(model_input(n, t, d, ragged=local) for n, t, d in inputs)
    config.output.extend(model_output(n, t, d) for n, t, d in outputs)
    dynamic_batching(config, opts, waits=waits)
    kind = mc.ModelInstanceGroup.KIND_CPU if local else mc.ModelInstanceGroup.KIND_GPU
    config.instance_group.append(mc.ModelInstanceGroup(count=instances, kind=kind))
    if not local and tensorrt:
        add_tensorrt(config, opts, [n for n, _, _ in inputs])
    if local:
        set_params(
            config,
            {
                "onnx_file": "model.onnx",
                "pad_values": json.dumps(pad_values),
                "intra_op_threads": "0",
                "max_batch_tokens": str(opts.max_batch_tokens),
            },
        )
    return config


def encoder_config(
    facts: ModelFacts, target: Target, opts: BatchingOptions, input_names: list[str], *, folded: bool = False
) -> mc.ModelConfig:
    """`folded` (local target, `triton_models/text_encoder.py`): the encoder step also tokenizes (TEXT or TOKEN_IDS
    in, the tokenizer model's counts, ids and mask out) and pools (the pooling graph `POOLING_FILE`, output
    `embedding`); its own inputs stay, optional, for callers that tokenize first (the proxy's token-level routes)."""
    config = onnx_model_config(
        model_names(facts.name)["encoder"],
        target,
        opts,
        inputs=[(n, "int64", [-1]) for n in input_names],
        outputs=[("last_hidden_state", "fp32", [-1, facts.dim])],
        pad_values={"input_ids": facts.pad_token_id},
        instances=opts.encoder_instances or 1,
        tensorrt=opts.tensorrt,  # the encoder only: the pooling and head graphs are too small to gain from it
        waits=True,  # the one step where a fuller batch pays
    )
    if folded:
        for tensor in config.input:
            tensor.optional = True
        config.input.append(model_input("TEXT", "bytes", [1], optional=True))
        config.input.append(model_input("TOKEN_IDS", "int64", [-1], ragged=True, optional=True))
        config.output.append(model_output("embedding", "fp32", [facts.dim]))
        for name in ("INPUT_IDS", "ATTENTION_MASK"):
            config.output.append(model_output(name, "int64", [-1]))
        for name in ("TOKEN_COUNT", "FULL_TOKEN_COUNT"):
            config.output.append(model_output(name, "int64", [1]))
        set_params(config, {"pooling_onnx_file": POOLING_FILE, **tokenizer_params(facts, opts)})
    return config


def pooling_config(facts: ModelFacts, target: Target, opts: BatchingOptions) -> mc.ModelConfig:
    return onnx_model_config(
        model_names(facts.name)["pooling"],
        target,
        opts,
        inputs=[("last_hidden_state", "fp32", [-1, facts.dim]), ("attention_mask", "int64", [-1])],
        outputs=[("embedding", "fp32", [facts.dim])],
        pad_values={},
        instances=1,
    )


def sparse_head_config(facts: ModelFacts, target: Target, opts: BatchingOptions) -> mc.ModelConfig:
    return onnx_model_config(
        m3_model_names(facts.name)["sparse_head"],
        target,
        opts,
        inputs=[("last_hidden_state", "fp32", [-1, facts.dim])],
        outputs=[("token_weights", "fp32", [-1])],
        pad_values={},
        instances=1,
    )


def colbert_head_config(facts: ModelFacts, target: Target, opts: BatchingOptions, colbert_dim: int) -> mc.ModelConfig:
    return onnx_model_config(
        m3_model_names(facts.name)["colbert_head"],
        target,
        opts,
        inputs=[("last_hidden_state", "fp32", [-1, facts.dim]), ("attention_mask", "int64", [-1])],
        outputs=[("colbert_vecs", "fp32", [-1, colbert_dim])],
        pad_values={},
        instances=1,
    )


def m3_post_config(facts: ModelFacts, opts: BatchingOptions, heads: M3HeadFiles, head: str) -> mc.ModelConfig:
    """numpy post-processing (`triton_models/m3_heads.py`) for head "sparse" or "colbert"; CPU on both targets."""
    config = mc.ModelConfig(name=m3_model_names(facts.name)[f"{head}_post"], backend="python")
    config.max_batch_size = opts.max_batch_size
    if head == "sparse":
        config.input.append(model_input("INPUT_IDS", "int64", [-1], ragged=True))
        config.input.append(model_input("TOKEN_WEIGHTS", "fp32", [-1], ragged=True))
        config.output.append(model_output("SPARSE_IDS", "int64", [-1]))
        config.output.append(model_output("SPARSE_WEIGHTS", "fp32", [-1]))
    else:
        config.input.append(model_input("COLBERT_VECS", "fp32", [-1, heads.colbert_dim], ragged=True))
        config.input.append(model_input("ATTENTION_MASK", "int64", [-1], ragged=True))
        config.output.append(model_output("COLBERT", "fp32", [-1, heads.colbert_dim]))
        config.output.append(model_output("COLBERT_LENGTH", "int64", [1]))
    dynamic_batching(config, opts)
    config.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
    set_params(config, {"head": head, "unused_token_ids": json.dumps(list(heads.unused_token_ids))})
    return config


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config, as_utf8=True)


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
