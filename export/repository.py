"""Write a Triton model repository: `<name>` ensemble = `<name>-tokenizer` -> `-encoder` -> `-pooling`,
and `<name>-ids`, the same chain for callers who send token ids instead of text.

Configs are built as `ModelConfig` protobuf messages (tritonclient's `model_config_pb2`) and
written with `text_format`, so every generated config.pbtxt parses as Triton's own schema.

Targets (everything but the encoder and pooling models is identical):
- `local`: encoder and pooling run `model.onnx` through `onnx_runner.py` (Python backend +
  onnxruntime), since the onnxruntime backend is only in the NGC container;
- `container-gpu`: the same `model.onnx` files under `platform: "onnxruntime_onnx"` on KIND_GPU.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton import triton_models
from bge_triton.model_facts import FACTS_FILE, ModelFacts

Target = Literal["local", "container-gpu"]
TARGETS: tuple[str, ...] = ("local", "container-gpu")
SOURCES_DIR = Path(triton_models.__file__).parent

TYPE = {
    "bytes": mc.TYPE_STRING,
    "int64": mc.TYPE_INT64,
    "fp32": mc.TYPE_FP32,
}


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    encoder_instances: int = 1
    pad_to_multiple_of: int = 8
    # Backstop for direct Triton callers: requests past this queue length, or waiting longer than
    # this, are rejected ("Exceeds maximum queue size" / "Request timeout expired"), never queued forever.
    max_queue_size: int = 512
    queue_timeout_us: int = 30_000_000
    # container-gpu only: run the ONNX graph through TensorRT inside Triton's onnxruntime backend
    # (TensorRT execution accelerator; engines are built on the GPU host at load time).
    tensorrt: bool = False
    tensorrt_fp16: bool = True


def model_names(name: str) -> dict[str, str]:
    return {
        "ensemble": name,
        "ids_ensemble": f"{name}-ids",
        "tokenizer": f"{name}-tokenizer",
        "encoder": f"{name}-encoder",
        "pooling": f"{name}-pooling",
    }


def _inp(name: str, dtype: str, dims: list[int], *, ragged: bool = False, optional: bool = False) -> mc.ModelInput:
    t = mc.ModelInput(name=name, data_type=TYPE[dtype], dims=dims)
    if ragged:
        t.allow_ragged_batch = True
    if optional:
        t.optional = True
    return t


def _out(name: str, dtype: str, dims: list[int]) -> mc.ModelOutput:
    return mc.ModelOutput(name=name, data_type=TYPE[dtype], dims=dims)


def _set_params(config: mc.ModelConfig, params: dict[str, str]) -> None:
    for key, value in params.items():
        config.parameters[key].string_value = value


def _dynamic_batching(config: mc.ModelConfig, opts: BatchingOptions) -> None:
    preferred = [b for b in opts.preferred_batch_sizes if b <= opts.max_batch_size]
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    policy = config.dynamic_batching.default_queue_policy
    policy.max_queue_size = opts.max_queue_size
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = opts.queue_timeout_us
    policy.allow_timeout_override = True


def tokenizer_config(facts: ModelFacts, opts: BatchingOptions) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model_names(facts.name)["tokenizer"], backend="python")
    config.max_batch_size = opts.max_batch_size
    # One of the two per request: the text ensemble sends TEXT, the token-id ensemble TOKEN_IDS.
    config.input.append(_inp("TEXT", "bytes", [1], optional=True))
    config.input.append(_inp("TOKEN_IDS", "int64", [-1], optional=True))
    for out in ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS"):
        config.output.append(_out(out, "int64", [-1]))
    config.output.append(_out("TOKEN_COUNT", "int64", [1]))
    config.output.append(_out("FULL_TOKEN_COUNT", "int64", [1]))
    _dynamic_batching(config, opts)
    config.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
    _set_params(
        config,
        {
            "tokenizer_file": "tokenizer.json",
            "max_tokens": str(facts.max_tokens),
            "pad_token_id": str(facts.pad_token_id),
            "pad_to_multiple_of": str(opts.pad_to_multiple_of),
        },
    )
    return config


def _onnx_model_config(
    name: str,
    target: Target,
    opts: BatchingOptions,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    pad_values: dict[str, int],
    instances: int,
) -> mc.ModelConfig:
    local = target == "local"
    config = mc.ModelConfig(name=name)
    if local:
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
    config.max_batch_size = opts.max_batch_size
    config.input.extend(_inp(n, t, d, ragged=local) for n, t, d in inputs)
    config.output.extend(_out(n, t, d) for n, t, d in outputs)
    _dynamic_batching(config, opts)
    kind = mc.ModelInstanceGroup.KIND_CPU if local else mc.ModelInstanceGroup.KIND_GPU
    config.instance_group.append(mc.ModelInstanceGroup(count=instances, kind=kind))
    if not local and opts.tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16" if opts.tensorrt_fp16 else "FP32"
        accelerator.parameters["max_workspace_size_bytes"] = str(4 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "true"
        accelerator.parameters["trt_engine_cache_path"] = "/tmp/trt-cache"
    if local:
        _set_params(config, {"onnx_file": "model.onnx", "pad_values": json.dumps(pad_values), "intra_op_threads": "0"})
    return config


def encoder_config(facts: ModelFacts, target: Target, opts: BatchingOptions, input_names: list[str]) -> mc.ModelConfig:
    return _onnx_model_config(
        model_names(facts.name)["encoder"],
        target,
        opts,
        inputs=[(n, "int64", [-1]) for n in input_names],
        outputs=[("last_hidden_state", "fp32", [-1, facts.dim])],
        pad_values={"input_ids": facts.pad_token_id},
        instances=opts.encoder_instances,
    )


def pooling_config(facts: ModelFacts, target: Target, opts: BatchingOptions) -> mc.ModelConfig:
    return _onnx_model_config(
        model_names(facts.name)["pooling"],
        target,
        opts,
        inputs=[("last_hidden_state", "fp32", [-1, facts.dim]), ("attention_mask", "int64", [-1])],
        outputs=[("embedding", "fp32", [facts.dim])],
        pad_values={},
        instances=1,
    )


def ensemble_config(
    facts: ModelFacts, opts: BatchingOptions, input_names: list[str], *, ids: bool = False
) -> mc.ModelConfig:
    """`<name>`: TEXT in; `<name>-ids` (ids=True): TOKEN_IDS in (rows right-padded with -1)."""
    names = model_names(facts.name)
    source = ("TOKEN_IDS", "int64", [-1]) if ids else ("TEXT", "bytes", [1])
    name = names["ids_ensemble"] if ids else names["ensemble"]
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.append(_inp(*source))
    config.output.append(_out("EMBEDDING", "fp32", [facts.dim]))
    config.output.append(_out("TOKEN_COUNT", "int64", [1]))
    config.output.append(_out("FULL_TOKEN_COUNT", "int64", [1]))
    tokenizer_outputs = {"INPUT_IDS": "input_ids", "ATTENTION_MASK": "attention_mask"}
    if "token_type_ids" in input_names:
        tokenizer_outputs["TOKEN_TYPE_IDS"] = "token_type_ids"
    tokenizer_outputs |= {"TOKEN_COUNT": "TOKEN_COUNT", "FULL_TOKEN_COUNT": "FULL_TOKEN_COUNT"}
    steps = config.ensemble_scheduling.step
    steps.add(
        model_name=names["tokenizer"], model_version=-1, input_map={source[0]: source[0]}, output_map=tokenizer_outputs
    )
    steps.add(
        model_name=names["encoder"],
        model_version=-1,
        input_map={n: n for n in input_names},
        output_map={"last_hidden_state": "last_hidden_state"},
    )
    steps.add(
        model_name=names["pooling"],
        model_version=-1,
        input_map={"last_hidden_state": "last_hidden_state", "attention_mask": "attention_mask"},
        output_map={"embedding": "EMBEDDING"},
    )
    _set_params(config, facts.to_parameters())
    return config


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config, as_utf8=True)


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def _write_model(
    root: Path, config: mc.ModelConfig, files: dict[str, Path], extra: dict[str, str] | None = None
) -> None:
    folder = root / config.name
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config_text(config), encoding="utf-8")
    for dest, src in files.items():
        shutil.copyfile(src, version / dest)
    for dest, text in (extra or {}).items():
        (folder / dest).write_text(text, encoding="utf-8")


def write_repository(
    repository: Path,
    facts: ModelFacts,
    *,
    tokenizer_json: Path,
    encoder_onnx: Path,
    pooling_onnx: Path,
    input_names: list[str],
    target: Target = "local",
    opts: BatchingOptions | None = None,
    parity_json: str | None = None,
) -> Path:
    """Write (or replace) the model's five folders in `repository`; returns the text ensemble's folder."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (local, container-gpu)")
    opts = opts or BatchingOptions()
    if opts.tensorrt and target == "local":
        raise ValueError("TensorRT needs the container-gpu target (Triton's onnxruntime backend on a GPU)")
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    names = model_names(facts.name)
    local = target == "local"
    runner = {"model.py": SOURCES_DIR / "onnx_runner.py"} if local else {}
    staging = Path(tempfile.mkdtemp(prefix=".bge-triton-", dir=repository.parent))
    try:
        _write_model(
            staging,
            tokenizer_config(facts, opts),
            {"model.py": SOURCES_DIR / "tokenizer.py", "tokenizer.json": tokenizer_json},
        )
        _write_model(
            staging,
            encoder_config(facts, target, opts, input_names),
            {"model.onnx": encoder_onnx, **runner},
            extra={"parity.json": parity_json} if parity_json else None,
        )
        _write_model(staging, pooling_config(facts, target, opts), {"model.onnx": pooling_onnx, **runner})
        _write_model(staging, ensemble_config(facts, opts, input_names), {}, extra={FACTS_FILE: facts.to_json()})
        _write_model(staging, ensemble_config(facts, opts, input_names, ids=True), {})
        for folder in names.values():
            dest = repository / folder
            if dest.exists():
                shutil.rmtree(dest)
            (staging / folder).rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return repository / names["ensemble"]
