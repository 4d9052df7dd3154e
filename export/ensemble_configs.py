"""The ensembles an export writes (config.pbtxt messages, see `model_configs.py`): `<name>` (TEXT in) and
`<name>-ids` (TOKEN_IDS in), tokenizer -> encoder -> pooling, and bge-m3's `-sparse`, `-colbert` and `-m3` over the
same tokenizer and encoder. On the local target the encoder step pools (`pooled`): two steps at run time.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.model_facts import ModelFacts
from bge_triton.model_names import m3_model_names, model_names

from .model_configs import BatchingOptions, M3HeadFiles, model_input, model_output, set_params


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
    config.input.append(model_input("TEXT", "bytes", [1]))
    if dense:
        config.output.append(model_output("EMBEDDING", "fp32", [facts.dim]))
    if sparse:
        config.output.append(model_output("SPARSE_IDS", "int64", [-1]))
        config.output.append(model_output("SPARSE_WEIGHTS", "fp32", [-1]))
    if colbert:
        config.output.append(model_output("COLBERT", "fp32", [-1, heads.colbert_dim]))
        config.output.append(model_output("COLBERT_LENGTH", "int64", [1]))
    config.output.append(model_output("TOKEN_COUNT", "int64", [1]))
    config.output.append(model_output("FULL_TOKEN_COUNT", "int64", [1]))
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
    set_params(config, facts.to_parameters())
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
    config.input.append(model_input(*source))
    config.output.append(model_output("EMBEDDING", "fp32", [facts.dim]))
    config.output.append(model_output("TOKEN_COUNT", "int64", [1]))
    config.output.append(model_output("FULL_TOKEN_COUNT", "int64", [1]))
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
    set_params(config, facts.to_parameters())
    return config
