"""Write a Triton model repository: `<name>` ensemble = `<name>-tokenizer` -> `-encoder` -> `-pooling`,
and `<name>-ids`, the same chain for callers who send token ids instead of text, and `<name>-tokenize`
(every token of a text, untruncated, with offsets: what the proxy's `POST /tokenize` answers).

A bge-m3 checkpoint (`facts.m3_heads`) adds its sparse and ColBERT heads, each an ONNX graph (`-sparse-head`,
`-colbert-head`, targets as for the encoder) followed by numpy post-processing (`-sparse-post`, `-colbert-post`,
`triton_models/m3_heads.py`), and three ensembles over the same tokenizer and encoder (TEXT [1] BYTES in):
- `<name>-sparse`:  SPARSE_IDS INT64 [-1] (kept token ids, right-padded with -1), SPARSE_WEIGHTS FP32 [-1]
  (aligned, padded with 0), TOKEN_COUNT, FULL_TOKEN_COUNT INT64 [1];
- `<name>-colbert`: COLBERT FP32 [-1, d] (vectors, right-padded with zero rows), COLBERT_LENGTH INT64 [1],
  TOKEN_COUNT, FULL_TOKEN_COUNT;
- `<name>-m3`: EMBEDDING FP32 [dim] and all of the above from one encoder pass.
The dense `<name>` ensemble is unchanged: dense-only callers never run the heads.

Configs are built as `ModelConfig` protobuf messages (tritonclient's `model_config_pb2`) and
written with `text_format`, so every generated config.pbtxt parses as Triton's own schema.

Targets (everything but the encoder and pooling models is identical):
- `local`: encoder and pooling run `model.onnx` through `onnx_runner.py` (Python backend +
  onnxruntime), since the onnxruntime backend is only in the NGC container. The encoder folder also holds the
  pooling graph (`pooling.onnx`, parameter `pooling_onnx_file`) and pools each sub-batch right after encoding it
  (output `embedding`): the ensembles map it to EMBEDDING and run two steps, tokenizer -> encoder, one
  Python-backend hop fewer per request (issue 19). `<name>-pooling` stays, the pooling step on its own;
- `container-gpu`: the same `model.onnx` files under `platform: "onnxruntime_onnx"` on KIND_GPU, three steps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton import triton_models
from bge_triton.model_facts import FACTS_FILE, ModelFacts
from bge_triton.model_names import m3_model_names, model_names

from . import torch_engine
from .fingerprint import with_fingerprint
from .gpu_target import ExportOptionsError, add_tensorrt, check_export_options, resolve_options
from .onnx_export import external_data_file, external_data_locations

Target = Literal["local", "container-gpu"]
TARGETS: tuple[str, ...] = ("local", "container-gpu")
SOURCES_DIR = Path(triton_models.__file__).parent
STAGING_PREFIX = ".bge-triton-staging-"
POOLING_FILE = "pooling.onnx"  # the pooling graph inside a folded encoder's version folder (local target)

TYPE = {
    "bytes": mc.TYPE_STRING,
    "int64": mc.TYPE_INT64,
    "fp32": mc.TYPE_FP32,
    "bool": mc.TYPE_BOOL,
}


@dataclass(frozen=True)
class TorchEncoder:
    """The torch engine's encoder step: the checkpoint whose weights it runs, on which device, in which dtype."""

    checkpoint: Path
    device: torch_engine.Device = "cpu"
    dtype: str = "fp32"


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
    # Backstop for direct Triton callers: requests past this queue length, or waiting longer than
    # this, are rejected ("Exceeds maximum queue size" / "Request timeout expired"), never queued forever.
    max_queue_size: int = 512
    queue_timeout_us: int = 30_000_000
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


def _dynamic_batching(config: mc.ModelConfig, opts: BatchingOptions, *, waits: bool = False) -> None:
    """Dynamic batching with the queue policy. Only the encoder (`waits`) holds a request back up to
    `max_queue_delay_us` to fill a batch: the steps around it batch what has queued while they were busy and
    never wait, since their delay would be paid once per step by every request (3 x 2 ms at batch 1)."""
    preferred = [b for b in opts.preferred_batch_sizes if b <= opts.max_batch_size]
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = (opts.max_queue_delay_us or 0) if waits else 0
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
    # With pad buckets (container-gpu) the requests of one tokenizer execution share a width, and only requests of
    # one shape batch on the onnxruntime backend: there the tokenizer's wait is what fills the encoder's batch.
    _dynamic_batching(config, opts, waits=bool(opts.pad_buckets))
    config.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
    _set_params(
        config,
        {
            "tokenizer_file": "tokenizer.json",
            "max_tokens": str(facts.max_tokens),
            "pad_token_id": str(facts.pad_token_id),
            "pad_to_multiple_of": str(opts.pad_to_multiple_of),
            "pad_buckets": ",".join(str(b) for b in opts.pad_buckets or ()),
        },
    )
    return config


def tokenize_config(facts: ModelFacts, opts: BatchingOptions) -> mc.ModelConfig:
    """`<name>-tokenize`: every token of a text, untruncated, with offsets (`triton_models/tokenize_model.py`).
    It carries no model facts, so clients never take it for an embedding model."""
    config = mc.ModelConfig(name=model_names(facts.name)["tokenize"], backend="python")
    config.max_batch_size = opts.max_batch_size
    config.input.append(_inp("TEXT", "bytes", [1], optional=True))  # TEXT, or DECODE_IDS (TEI's /decode)
    config.input.append(_inp("ADD_SPECIAL_TOKENS", "bool", [1], optional=True))
    config.input.append(_inp("DECODE_IDS", "int64", [-1], optional=True))
    config.input.append(_inp("SKIP_SPECIAL_TOKENS", "bool", [1], optional=True))
    config.output.append(_out("DECODED", "bytes", [1]))
    config.output.append(_out("TOKEN_IDS", "int64", [-1]))
    config.output.append(_out("TOKEN_OFFSETS", "int64", [-1, 2]))
    config.output.append(_out("TOKEN_SPECIAL", "bool", [-1]))
    config.output.append(_out("TOKENS", "bytes", [-1]))
    config.output.append(_out("TOKEN_COUNT", "int64", [1]))
    _dynamic_batching(config, opts)
    config.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
    _set_params(config, {"tokenizer_file": "tokenizer.json", "window": str(facts.max_tokens)})
    return config


def _onnx_model_config(
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
    config.input.extend(_inp(n, t, d, ragged=local) for n, t, d in inputs)
    config.output.extend(_out(n, t, d) for n, t, d in outputs)
    _dynamic_batching(config, opts, waits=waits)
    kind = mc.ModelInstanceGroup.KIND_CPU if local else mc.ModelInstanceGroup.KIND_GPU
    config.instance_group.append(mc.ModelInstanceGroup(count=instances, kind=kind))
    if not local and tensorrt:
        add_tensorrt(config, opts, [n for n, _, _ in inputs])
    if local:
        _set_params(
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
    facts: ModelFacts, target: Target, opts: BatchingOptions, input_names: list[str], *, pooled: bool = False
) -> mc.ModelConfig:
    """`pooled` (local target): the encoder also runs the pooling graph (`POOLING_FILE`) and outputs `embedding`."""
    config = _onnx_model_config(
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
    if pooled:
        config.output.append(_out("embedding", "fp32", [facts.dim]))
        config.parameters["pooling_onnx_file"].string_value = POOLING_FILE
    return config


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


def sparse_head_config(facts: ModelFacts, target: Target, opts: BatchingOptions) -> mc.ModelConfig:
    return _onnx_model_config(
        m3_model_names(facts.name)["sparse_head"],
        target,
        opts,
        inputs=[("last_hidden_state", "fp32", [-1, facts.dim])],
        outputs=[("token_weights", "fp32", [-1])],
        pad_values={},
        instances=1,
    )


def colbert_head_config(facts: ModelFacts, target: Target, opts: BatchingOptions, colbert_dim: int) -> mc.ModelConfig:
    return _onnx_model_config(
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
        config.input.append(_inp("INPUT_IDS", "int64", [-1], ragged=True))
        config.input.append(_inp("TOKEN_WEIGHTS", "fp32", [-1], ragged=True))
        config.output.append(_out("SPARSE_IDS", "int64", [-1]))
        config.output.append(_out("SPARSE_WEIGHTS", "fp32", [-1]))
    else:
        config.input.append(_inp("COLBERT_VECS", "fp32", [-1, heads.colbert_dim], ragged=True))
        config.input.append(_inp("ATTENTION_MASK", "int64", [-1], ragged=True))
        config.output.append(_out("COLBERT", "fp32", [-1, heads.colbert_dim]))
        config.output.append(_out("COLBERT_LENGTH", "int64", [1]))
    _dynamic_batching(config, opts)
    config.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
    _set_params(config, {"head": head, "unused_token_ids": json.dumps(list(heads.unused_token_ids))})
    return config


def _tokenize_and_encode_steps(
    config: mc.ModelConfig, name: str, input_names: list[str], source: str, encoder_outputs: dict[str, str]
) -> None:
    """The ensemble steps every embedding ensemble starts with: `<name>-tokenizer` on `source` (TEXT or
    TOKEN_IDS), then `<name>-encoder` -> `encoder_outputs` (its output -> the ensemble tensor); the tokenizer's
    counts become the ensemble's."""
    names = model_names(name)
    tokenizer_outputs = {"INPUT_IDS": "input_ids", "ATTENTION_MASK": "attention_mask"}
    if "token_type_ids" in input_names:
        tokenizer_outputs["TOKEN_TYPE_IDS"] = "token_type_ids"
    tokenizer_outputs |= {"TOKEN_COUNT": "TOKEN_COUNT", "FULL_TOKEN_COUNT": "FULL_TOKEN_COUNT"}
    steps = config.ensemble_scheduling.step
    steps.add(model_name=names["tokenizer"], model_version=-1, input_map={source: source}, output_map=tokenizer_outputs)
    steps.add(
        model_name=names["encoder"],
        model_version=-1,
        input_map={n: n for n in input_names},
        output_map=encoder_outputs,
    )


def m3_ensemble_config(
    facts: ModelFacts,
    opts: BatchingOptions,
    input_names: list[str],
    heads: M3HeadFiles,
    kind: str,
    *,
    pooled: bool = False,
) -> mc.ModelConfig:
    """`<name>-sparse` (kind "sparse"), `<name>-colbert` ("colbert") or `<name>-m3` ("m3"): TEXT in, one encoder
    pass, then the heads the kind asks for (`pooled`: the encoder's own `embedding` is EMBEDDING, no pooling
    step)."""
    names, m3 = model_names(facts.name), m3_model_names(facts.name)
    dense, sparse, colbert = kind == "m3", kind in ("sparse", "m3"), kind in ("colbert", "m3")
    config = mc.ModelConfig(name=m3[f"{kind}_ensemble"], platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.append(_inp("TEXT", "bytes", [1]))
    if dense:
        config.output.append(_out("EMBEDDING", "fp32", [facts.dim]))
    if sparse:
        config.output.append(_out("SPARSE_IDS", "int64", [-1]))
        config.output.append(_out("SPARSE_WEIGHTS", "fp32", [-1]))
    if colbert:
        config.output.append(_out("COLBERT", "fp32", [-1, heads.colbert_dim]))
        config.output.append(_out("COLBERT_LENGTH", "int64", [1]))
    config.output.append(_out("TOKEN_COUNT", "int64", [1]))
    config.output.append(_out("FULL_TOKEN_COUNT", "int64", [1]))
    encoder_outputs = {"last_hidden_state": "last_hidden_state"} if sparse or colbert or not pooled else {}
    if dense and pooled:
        encoder_outputs["embedding"] = "EMBEDDING"
    _tokenize_and_encode_steps(config, facts.name, input_names, "TEXT", encoder_outputs)
    steps = config.ensemble_scheduling.step
    hidden_and_mask = {"last_hidden_state": "last_hidden_state", "attention_mask": "attention_mask"}
    if dense and not pooled:
        steps.add(
            model_name=names["pooling"],
            model_version=-1,
            input_map=hidden_and_mask,
            output_map={"embedding": "EMBEDDING"},
        )
    if sparse:
        steps.add(
            model_name=m3["sparse_head"],
            model_version=-1,
            input_map={"last_hidden_state": "last_hidden_state"},
            output_map={"token_weights": "token_weights"},
        )
        steps.add(
            model_name=m3["sparse_post"],
            model_version=-1,
            input_map={"INPUT_IDS": "input_ids", "TOKEN_WEIGHTS": "token_weights"},
            output_map={"SPARSE_IDS": "SPARSE_IDS", "SPARSE_WEIGHTS": "SPARSE_WEIGHTS"},
        )
    if colbert:
        steps.add(
            model_name=m3["colbert_head"],
            model_version=-1,
            input_map=hidden_and_mask,
            output_map={"colbert_vecs": "colbert_vecs"},
        )
        steps.add(
            model_name=m3["colbert_post"],
            model_version=-1,
            input_map={"COLBERT_VECS": "colbert_vecs", "ATTENTION_MASK": "attention_mask"},
            output_map={"COLBERT": "COLBERT", "COLBERT_LENGTH": "COLBERT_LENGTH"},
        )
    _set_params(config, facts.to_parameters())
    return config


def ensemble_config(
    facts: ModelFacts, opts: BatchingOptions, input_names: list[str], *, ids: bool = False, pooled: bool = False
) -> mc.ModelConfig:
    """`<name>`: TEXT in; `<name>-ids` (ids=True): TOKEN_IDS in (rows right-padded with -1). Three concerns,
    tokenizer -> encoder -> pooling; `pooled` (local target): the encoder step pools (`encoder_config(pooled=True)`)
    and its `embedding` is EMBEDDING, two steps at run time."""
    names = model_names(facts.name)
    source = ("TOKEN_IDS", "int64", [-1]) if ids else ("TEXT", "bytes", [1])
    name = names["ids_ensemble"] if ids else names["ensemble"]
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.append(_inp(*source))
    config.output.append(_out("EMBEDDING", "fp32", [facts.dim]))
    config.output.append(_out("TOKEN_COUNT", "int64", [1]))
    config.output.append(_out("FULL_TOKEN_COUNT", "int64", [1]))
    if pooled:
        _tokenize_and_encode_steps(config, facts.name, input_names, source[0], {"embedding": "EMBEDDING"})
    else:
        _tokenize_and_encode_steps(
            config, facts.name, input_names, source[0], {"last_hidden_state": "last_hidden_state"}
        )
        config.ensemble_scheduling.step.add(
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
        (version / dest).parent.mkdir(parents=True, exist_ok=True)  # e.g. the torch engine's checkpoint/
        if dest.endswith(".onnx"):
            copy_onnx(Path(src), version / dest)
        else:
            shutil.copyfile(src, version / dest)
    for dest, text in (extra or {}).items():
        (folder / dest).write_text(text, encoding="utf-8")


def copy_onnx(source: Path, dest: Path) -> None:
    """Copy a graph; one with external data gets it as `<dest>.data` (`model.onnx.data`) beside it."""
    locations = external_data_locations(source)
    if not locations:
        shutil.copyfile(source, dest)
        return
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(str(source), load_external_data=False)
    renamed = {locations[0]: external_data_file(dest).name} if len(locations) == 1 else {}
    for tensor in _get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value in renamed:
                entry.value = renamed[entry.value]
    onnx.save_model(model, str(dest))  # the graph alone: its tensors stay in the data file
    for location in locations:
        shutil.copyfile(source.parent / location, dest.parent / renamed.get(location, location))


def write_repository(
    repository: Path,
    facts: ModelFacts,
    *,
    tokenizer_json: Path,
    encoder_onnx: Path | None,
    pooling_onnx: Path | None,
    input_names: list[str],
    target: Target = "local",
    opts: BatchingOptions | None = None,
    parity_json: str | None = None,
    m3_heads: M3HeadFiles | None = None,
    torch_encoder: TorchEncoder | None = None,
    device: torch_engine.Device = "cpu",
) -> Path:
    """Write (or replace) the model's six folders in `repository` (thirteen for bge-m3: `m3_heads`, required
    when `facts.m3_heads`); returns the text ensemble's folder. `torch_encoder`: the torch engine's encoder step
    (`export/torch_engine.py`) instead of `encoder_onnx`."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (local, container-gpu)")
    opts = resolve_options(opts or BatchingOptions(), target, facts.max_tokens)
    check_export_options(facts.precision, target, opts.tensorrt)
    if facts.m3_heads and m3_heads is None:
        raise ValueError(f"{facts.name} is a bge-m3 checkpoint (m3_heads): pass the exported heads (m3_heads=...)")
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    names = model_names(facts.name)
    folders = list(names.values())
    local = target == "local"
    runner = {"model.py": SOURCES_DIR / "onnx_runner.py"} if local else {}
    _refuse_mixed_targets(repository, target, set(folders) | set(m3_model_names(facts.name).values()))
    _remove_stale_staging(repository)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=staging_parent(repository)))
    try:
        _write_model(
            staging,
            tokenizer_config(facts, opts),
            {"model.py": SOURCES_DIR / "tokenizer.py", "tokenizer.json": tokenizer_json},
        )
        _write_model(
            staging,
            tokenize_config(facts, opts),
            {
                "model.py": SOURCES_DIR / "tokenize_model.py",
                "tokenizer.py": SOURCES_DIR / "tokenizer.py",
                "tokenizer.json": tokenizer_json,
            },
        )
        pooled = local and torch_encoder is None  # the encoder step pools: two steps at run time
        encoder = encoder_config(facts, target, opts, input_names, pooled=pooled)
        if torch_encoder is None:
            encoder_files = {"model.onnx": encoder_onnx, **runner}
            if pooled:
                encoder_files[POOLING_FILE] = pooling_onnx
            if local:
                encoder = torch_engine.place_onnx_encoder(encoder, device)
        else:
            encoder = torch_engine.configure_encoder(
                encoder, facts, input_names, torch_encoder.device, torch_encoder.dtype, opts.encoder_instances or 1
            )
            encoder_files = torch_engine.encoder_files(torch_encoder.checkpoint, SOURCES_DIR)
        _write_model(staging, encoder, encoder_files, extra={"parity.json": parity_json} if parity_json else None)
        if torch_encoder is None:
            _write_model(staging, pooling_config(facts, target, opts), {"model.onnx": pooling_onnx, **runner})
        else:
            pooling = torch_engine.configure_pooling(pooling_config(facts, target, opts), facts)
            _write_model(staging, pooling, torch_engine.pooling_files(SOURCES_DIR))
        facts = with_fingerprint(facts, staging, names)  # what the proxy's vector cache keys vectors by
        _write_model(
            staging, ensemble_config(facts, opts, input_names, pooled=pooled), {}, extra={FACTS_FILE: facts.to_json()}
        )
        _write_model(staging, ensemble_config(facts, opts, input_names, ids=True, pooled=pooled), {})
        if m3_heads is not None:
            folders += _write_m3_models(staging, facts, target, opts, input_names, m3_heads, runner, pooled=pooled)
        for folder in folders:
            dest = repository / folder
            if dest.exists():
                shutil.rmtree(dest)
            move_folder(staging / folder, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return repository / names["ensemble"]


def staging_parent(repository: Path) -> Path:
    """Where the new model folders are built before they are renamed into `repository`: beside it when that is
    one filesystem, else inside it. A rename cannot cross filesystems (EXDEV), and a repository that is a
    mount point (compose's bind mount `/models`, a Kubernetes PVC, a tmpfs) never shares its parent's mount.
    Triton takes every folder of a repository for a model, dot-folders too ("Poll failed for model directory
    '.bge-triton-…'"), so staging inside is the second choice: it exists only while export runs."""
    parent = repository.resolve().parent
    if os.path.ismount(repository) or os.stat(repository).st_dev != os.stat(parent).st_dev:
        return repository
    return parent


def move_folder(source: Path, dest: Path) -> None:
    """Rename `source` to `dest`; a copy where the kernel refuses the rename across mounts (EXDEV: two bind
    mounts of one filesystem share st_dev but not a mount)."""
    try:
        source.rename(dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = dest.with_name(f"{STAGING_PREFIX}{dest.name}")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial)
        partial.rename(dest)  # same folder: atomic
        shutil.rmtree(source, ignore_errors=True)


def repository_targets(repository: Path, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """The target each ONNX model already in `repository` was written for (folder -> local | container-gpu)."""
    found: dict[str, str] = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        if path.parent.name in skip:
            continue
        try:
            config = parse_config(path.read_text(encoding="utf-8"))
        except (OSError, text_format.ParseError):
            continue
        if config.platform == "onnxruntime_onnx":
            found[path.parent.name] = "container-gpu"
        elif config.backend == "python" and "onnx_file" in config.parameters:
            found[path.parent.name] = "local"
    return found


def _refuse_mixed_targets(repository: Path, target: Target, own: set[str]) -> None:
    """One repository, one target: the NGC image's Python backend has no onnxruntime (a local-target model makes
    tritonserver exit there), and the pytriton tritonserver has no onnxruntime backend."""
    other = {folder: found for folder, found in repository_targets(repository, own).items() if found != target}
    if other:
        folder, found = next(iter(sorted(other.items())))
        raise ExportOptionsError(
            f"{repository} already holds {folder} for --target {found}; a repository serves one target (the NGC "
            f"image cannot load local-target models, the local tritonserver cannot load container-gpu ones): "
            f"export --target {target} into another --repository"
        )


def _remove_stale_staging(repository: Path) -> None:
    """Staging folders an interrupted export (SIGKILL) left inside the repository: Triton would refuse them."""
    for stale in repository.glob(f"{STAGING_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _write_m3_models(
    staging: Path,
    facts: ModelFacts,
    target: Target,
    opts: BatchingOptions,
    input_names: list[str],
    heads: M3HeadFiles,
    runner: dict[str, Path],
    *,
    pooled: bool = False,
) -> list[str]:
    post = {"model.py": SOURCES_DIR / "m3_heads.py"}
    _write_model(staging, sparse_head_config(facts, target, opts), {"model.onnx": heads.sparse_onnx, **runner})
    _write_model(
        staging,
        colbert_head_config(facts, target, opts, heads.colbert_dim),
        {"model.onnx": heads.colbert_onnx, **runner},
    )
    _write_model(staging, m3_post_config(facts, opts, heads, "sparse"), post)
    _write_model(staging, m3_post_config(facts, opts, heads, "colbert"), post)
    for kind in ("sparse", "colbert", "m3"):
        _write_model(staging, m3_ensemble_config(facts, opts, input_names, heads, kind, pooled=pooled), {})
    return list(m3_model_names(facts.name).values())
