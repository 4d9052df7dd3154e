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
  onnxruntime), since the onnxruntime backend is only in the NGC container. The encoder step folds its neighbours
  in (issue 19, `triton_models/text_encoder.py`): its folder also holds the tokenizer (`tokenizer.py`,
  `tokenizer.json`) and the pooling graph (`pooling.onnx`, parameter `pooling_onnx_file`); it takes TEXT or
  TOKEN_IDS, tokenizes, encodes and pools each sub-batch right after encoding it (output `embedding`), so the dense
  ensembles run ONE step and bge-m3's ensembles one before their heads, no Python-backend hop between steps.
  `<name>-tokenizer` and `<name>-pooling` stay, each step on its own (the proxy's token-level routes call the
  tokenizer, then the encoder with ids);
- `container-gpu`: the same `model.onnx` files under `platform: "onnxruntime_onnx"` on KIND_GPU, three steps.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bge_triton import triton_models
from bge_triton.model_facts import FACTS_FILE, ModelFacts
from bge_triton.model_names import m3_model_names, model_names

from . import torch_engine
from .ensemble_configs import ensemble_config, m3_ensemble_config
from .fingerprint import with_fingerprint
from .gpu_target import check_export_options, resolve_options
from .model_configs import (
    POOLING_FILE,
    TARGETS,
    BatchingOptions,
    M3HeadFiles,
    Target,
    colbert_head_config,
    encoder_config,
    m3_post_config,
    pooling_config,
    sparse_head_config,
    tokenize_config,
    tokenizer_config,
)
from .repository_folders import (
    STAGING_PREFIX,
    move_folder,
    refuse_mixed_targets,
    remove_stale_staging,
    staging_parent,
    write_model,
)

SOURCES_DIR = Path(triton_models.__file__).parent


@dataclass(frozen=True)
class TorchEncoder:
    """The torch engine's encoder step: the checkpoint whose weights it runs, on which device, in which dtype."""

    checkpoint: Path
    device: torch_engine.Device = "cpu"
    dtype: str = "fp32"


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
    refuse_mixed_targets(repository, target, set(folders) | set(m3_model_names(facts.name).values()))
    remove_stale_staging(repository)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=staging_parent(repository)))
    try:
        write_model(
            staging,
            tokenizer_config(facts, opts),
            {"model.py": SOURCES_DIR / "tokenizer.py", "tokenizer.json": tokenizer_json},
        )
        write_model(
            staging,
            tokenize_config(facts, opts),
            {
                "model.py": SOURCES_DIR / "tokenize_model.py",
                "tokenizer.py": SOURCES_DIR / "tokenizer.py",
                "tokenizer.json": tokenizer_json,
            },
        )
        folded = local and torch_encoder is None  # the encoder step tokenizes and pools: one step at run time
        encoder = encoder_config(facts, target, opts, input_names, folded=folded)
        if torch_encoder is None:
            encoder_files = {"model.onnx": encoder_onnx, **runner}
            if folded:
                encoder_files |= {
                    "model.py": SOURCES_DIR / "text_encoder.py",
                    "onnx_runner.py": SOURCES_DIR / "onnx_runner.py",
                    "tokenizer.py": SOURCES_DIR / "tokenizer.py",
                    "tokenizer.json": tokenizer_json,
                    POOLING_FILE: pooling_onnx,
                }
            if local:
                encoder = torch_engine.place_onnx_encoder(encoder, device)
        else:
            encoder = torch_engine.configure_encoder(
                encoder, facts, input_names, torch_encoder.device, torch_encoder.dtype, opts.encoder_instances or 1
            )
            encoder_files = torch_engine.encoder_files(torch_encoder.checkpoint, SOURCES_DIR)
        write_model(staging, encoder, encoder_files, extra={"parity.json": parity_json} if parity_json else None)
        if torch_encoder is None:
            write_model(staging, pooling_config(facts, target, opts), {"model.onnx": pooling_onnx, **runner})
        else:
            pooling = torch_engine.configure_pooling(pooling_config(facts, target, opts), facts)
            write_model(staging, pooling, torch_engine.pooling_files(SOURCES_DIR))
        facts = with_fingerprint(facts, staging, names)  # what the proxy's vector cache keys vectors by
        write_model(
            staging, ensemble_config(facts, opts, input_names, folded=folded), {}, extra={FACTS_FILE: facts.to_json()}
        )
        write_model(staging, ensemble_config(facts, opts, input_names, ids=True, folded=folded), {})
        if m3_heads is not None:
            folders += _write_m3_models(staging, facts, target, opts, input_names, m3_heads, runner, folded=folded)
        for folder in folders:
            dest = repository / folder
            if dest.exists():
                shutil.rmtree(dest)
            move_folder(staging / folder, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return repository / names["ensemble"]


def _write_m3_models(
    staging: Path,
    facts: ModelFacts,
    target: Target,
    opts: BatchingOptions,
    input_names: list[str],
    heads: M3HeadFiles,
    runner: dict[str, Path],
    *,
    folded: bool = False,
) -> list[str]:
    post = {"model.py": SOURCES_DIR / "m3_heads.py"}
    write_model(staging, sparse_head_config(facts, target, opts), {"model.onnx": heads.sparse_onnx, **runner})
    write_model(
        staging,
        colbert_head_config(facts, target, opts, heads.colbert_dim),
        {"model.onnx": heads.colbert_onnx, **runner},
    )
    write_model(staging, m3_post_config(facts, opts, heads, "sparse"), post)
    write_model(staging, m3_post_config(facts, opts, heads, "colbert"), post)
    for kind in ("sparse", "colbert", "m3"):
        write_model(staging, m3_ensemble_config(facts, opts, input_names, heads, kind, folded=folded), {})
    return list(m3_model_names(facts.name).values())
