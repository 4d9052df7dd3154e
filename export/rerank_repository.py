"""Write a reranker's Triton models: the `<name>` ensemble = `<name>-pair-tokenizer` -> `<name>-encoder`.

Ensemble `<name>` (the model facts in its parameters and `model_facts.json`, `task: "rerank"`):
  inputs  QUERY    BYTES [1]  the query (repeated on every row of a request)
          DOCUMENT BYTES [1]  one document per row
  outputs SCORE    FP32  [1]  the raw relevance logit (sigmoid it for a 0-1 score)
          TOKEN_COUNT, FULL_TOKEN_COUNT INT64 [1]  the pair's tokens after / before truncation

The encoder is the sequence-classification graph under the same configuration as an embedding encoder
(`model_configs.onnx_model_config`: the ONNX runner on the local target with its token budget, onnxruntime on
container-gpu; dynamic batching, the queue policy), so dynamic batching and `--max-batch-tokens` work as for
embeddings. Folders are staged and renamed into place as `write_repository` does.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.model_facts import FACTS_FILE, ModelFacts
from bge_triton.model_names import rerank_model_names

from . import torch_engine
from .gpu_target import check_export_options, resolve_options
from .model_configs import (
    TARGETS,
    BatchingOptions,
    Target,
    finish_tokenizer_config,
    model_input,
    model_output,
    onnx_model_config,
    set_params,
)
from .onnx_export import encoder_input_names
from .repository import SOURCES_DIR
from .repository_folders import (
    STAGING_PREFIX,
    move_folder,
    refuse_mixed_targets,
    remove_stale_staging,
    staging_parent,
    write_model,
)

SCORE_OUTPUT = "SCORE"


def pair_tokenizer_config(facts: ModelFacts, opts: BatchingOptions) -> mc.ModelConfig:
    config = mc.ModelConfig(name=rerank_model_names(facts.name)["tokenizer"], backend="python")
    config.max_batch_size = opts.max_batch_size
    config.input.append(model_input("QUERY", "bytes", [1]))
    config.input.append(model_input("DOCUMENT", "bytes", [1]))
    finish_tokenizer_config(config, facts, opts)
    return config


def rerank_encoder_config(
    facts: ModelFacts, target: Target, opts: BatchingOptions, input_names: list[str]
) -> mc.ModelConfig:
    return onnx_model_config(
        rerank_model_names(facts.name)["encoder"],
        target,
        opts,
        inputs=[(n, "int64", [-1]) for n in input_names],
        outputs=[("logits", "fp32", [1])],
        pad_values={"input_ids": facts.pad_token_id},
        instances=opts.encoder_instances or 1,
        tensorrt=opts.tensorrt,
        waits=True,
    )


def rerank_ensemble_config(facts: ModelFacts, opts: BatchingOptions, input_names: list[str]) -> mc.ModelConfig:
    names = rerank_model_names(facts.name)
    config = mc.ModelConfig(name=names["ensemble"], platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.append(model_input("QUERY", "bytes", [1]))
    config.input.append(model_input("DOCUMENT", "bytes", [1]))
    config.output.append(model_output(SCORE_OUTPUT, "fp32", [1]))
    config.output.append(model_output("TOKEN_COUNT", "int64", [1]))
    config.output.append(model_output("FULL_TOKEN_COUNT", "int64", [1]))
    tokenizer_outputs = {"INPUT_IDS": "input_ids", "ATTENTION_MASK": "attention_mask"}
    if "token_type_ids" in input_names:
        tokenizer_outputs["TOKEN_TYPE_IDS"] = "token_type_ids"
    tokenizer_outputs |= {"TOKEN_COUNT": "TOKEN_COUNT", "FULL_TOKEN_COUNT": "FULL_TOKEN_COUNT"}
    steps = config.ensemble_scheduling.step
    steps.add(model_name=names["tokenizer"], model_version=-1, input_map={"QUERY": "QUERY", "DOCUMENT": "DOCUMENT"},
              output_map=tokenizer_outputs)  # fmt: skip
    steps.add(model_name=names["encoder"], model_version=-1, input_map={n: n for n in input_names},
              output_map={"logits": SCORE_OUTPUT})  # fmt: skip
    set_params(config, facts.to_parameters())
    return config


def write_rerank_repository(
    repository: Path,
    facts: ModelFacts,
    *,
    tokenizer_json: Path,
    encoder_onnx: Path,
    target: Target = "local",
    opts: BatchingOptions | None = None,
    parity_json: str | None = None,
    device: torch_engine.Device = "cpu",
) -> Path:
    """Write (or replace) the reranker's three folders in `repository`; returns the ensemble's folder."""
    if facts.task != "rerank":
        raise ValueError(f"{facts.name} is not a reranker (task {facts.task!r})")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (local, container-gpu)")
    opts = resolve_options(opts or BatchingOptions(), target, facts.max_tokens)
    check_export_options(facts.precision, target, opts.tensorrt)
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    names = rerank_model_names(facts.name)
    input_names = encoder_input_names(facts)
    local = target == "local"
    refuse_mixed_targets(repository, target, set(names.values()))
    remove_stale_staging(repository)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=staging_parent(repository)))
    try:
        write_model(
            staging,
            pair_tokenizer_config(facts, opts),
            {
                "model.py": SOURCES_DIR / "pair_tokenizer.py",
                "tokenizer.py": SOURCES_DIR / "tokenizer.py",
                "tokenizer.json": tokenizer_json,
            },
        )
        encoder = rerank_encoder_config(facts, target, opts, input_names)
        if local:
            encoder = torch_engine.place_onnx_encoder(encoder, device)
        runner = {"model.py": SOURCES_DIR / "onnx_runner.py"} if local else {}
        write_model(staging, encoder, {"model.onnx": encoder_onnx, **runner},
                     extra={"parity.json": parity_json} if parity_json else None)  # fmt: skip
        write_model(staging, rerank_ensemble_config(facts, opts, input_names), {},
                     extra={FACTS_FILE: facts.to_json()})  # fmt: skip
        for folder in names.values():
            dest = repository / folder
            if dest.exists():
                shutil.rmtree(dest)
            move_folder(staging / folder, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return repository / names["ensemble"]
