"""The ensembles an export writes (config.pbtxt messages, see `model_configs.py`): `<name>` (TEXT in) and
`<name>-ids` (TOKEN_IDS in), tokenizer -> encoder -> pooling, and bge-m3's `-sparse`, `-colbert` and `-m3` over the
same tokenizer and encoder. On the local target the encoder step tokenizes and pools (`folded`,
`triton_models/text_encoder.py`): one step at run time for the dense ensembles, one before bge-m3's heads.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.model_facts import ModelFacts
from bge_triton.model_names import m3_model_names, model_names

from .model_configs import BatchingOptions, M3HeadFiles, model_input, model_output, set_params


def _tokenize_and_encode_steps(
    config: mc.ModelConfig,
    name: str,
    input_names: list[str],
    source: str,
    encoder_outputs: dict[str, str],
    *,
    folded: bool,
    token_tensors: tuple[str, ...] = (),
) -> None:
    """The ensemble steps every embedding ensemble starts with: `<name>-tokenizer` on `source` (TEXT or
    TOKEN_IDS), then `<name>-encoder` -> `encoder_outputs` (its output -> the ensemble tensor); the tokenizer's
    counts become the ensemble's. `folded`: one step, the encoder tokenizes `source` itself and also answers the
    counts and the `token_tensors` later steps read ("input_ids", "attention_mask")."""
    names = model_names(name)
    steps = config.ensemble_scheduling.step
    counts = {"TOKEN_COUNT": "TOKEN_COUNT", "FULL_TOKEN_COUNT": "FULL_TOKEN_COUNT"}
    if folded:
        tokens = {tensor.upper(): tensor for tensor in token_tensors}
        steps.add(
            model_name=names["encoder"],
            model_version=-1,
            input_map={source: source},
            output_map=encoder_outputs | tokens | counts,
        )
        return
    tokenizer_outputs = {"INPUT_IDS": "input_ids", "ATTENTION_MASK": "attention_mask"}
    if "token_type_ids" in input_names:
        tokenizer_outputs["TOKEN_TYPE_IDS"] = "token_type_ids"
    steps.add(
        model_name=names["tokenizer"],
        model_version=-1,
        input_map={source: source},
        output_map=tokenizer_outputs | counts,
    )
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
    folded: bool = False,
) -> mc.ModelConfig:
    """`<name>-sparse` (kind "sparse"), `<name>-colbert` ("colbert") or `<name>-m3` ("m3"): TEXT in, one encoder
    pass, then the heads the kind asks for (`folded`: the encoder step tokenizes, and its own `embedding` is
    EMBEDDING, no pooling step)."""
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
    encoder_outputs = {"last_hidden_state": "last_hidden_state"} if sparse or colbert or not folded else {}
    if dense and folded:
        encoder_outputs["embedding"] = "EMBEDDING"
    # What the steps after the encoder read of the tokenizer's answer: the sparse post-processing the ids, the
    # ColBERT head and post-processing the mask (unfolded, the tokenizer step answers both anyway).
    token_tensors = (("input_ids",) if sparse else ()) + (("attention_mask",) if colbert else ())
    _tokenize_and_encode_steps(
        config, facts.name, input_names, "TEXT", encoder_outputs, folded=folded, token_tensors=token_tensors
    )
    steps = config.ensemble_scheduling.step
    hidden_and_mask = {"last_hidden_state": "last_hidden_state", "attention_mask": "attention_mask"}
    if dense and not folded:
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
    facts: ModelFacts, opts: BatchingOptions, input_names: list[str], *, ids: bool = False, folded: bool = False
) -> mc.ModelConfig:
    """`<name>`: TEXT in; `<name>-ids` (ids=True): TOKEN_IDS in (rows right-padded with -1). Three concerns,
    tokenizer -> encoder -> pooling; `folded` (local target): the encoder step tokenizes and pools
    (`encoder_config(folded=True)`) and its `embedding` is EMBEDDING, one step at run time."""
    names = model_names(facts.name)
    source = ("TOKEN_IDS", "int64", [-1]) if ids else ("TEXT", "bytes", [1])
    name = names["ids_ensemble"] if ids else names["ensemble"]
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.append(model_input(*source))
    config.output.append(model_output("EMBEDDING", "fp32", [facts.dim]))
    config.output.append(model_output("TOKEN_COUNT", "int64", [1]))
    config.output.append(model_output("FULL_TOKEN_COUNT", "int64", [1]))
    if folded:
        _tokenize_and_encode_steps(config, facts.name, input_names, source[0], {"embedding": "EMBEDDING"}, folded=True)
    else:
        _tokenize_and_encode_steps(
            config, facts.name, input_names, source[0], {"last_hidden_state": "last_hidden_state"}, folded=False
        )
        config.ensemble_scheduling.step.add(
            model_name=names["pooling"],
            model_version=-1,
            input_map={"last_hidden_state": "last_hidden_state", "attention_mask": "attention_mask"},
            output_map={"embedding": "EMBEDDING"},
        )
    set_params(config, facts.to_parameters())
    return config
