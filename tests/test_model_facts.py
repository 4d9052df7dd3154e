"""Model facts come from the checkpoint's own files, for every model family we serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bge_triton.export.checkpoint import minilm_dir
from bge_triton.model_facts import FactsError, ModelFacts
from bge_triton.package_data import model_config_dir

BGE_ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


def test_minilm_facts_from_its_sentence_transformers_files() -> None:
    facts = ModelFacts.from_checkpoint(minilm_dir(), name="all-MiniLM-L6-v2", source="x")
    assert (facts.dim, facts.max_tokens, facts.pooling, facts.normalize) == (384, 256, "mean", True)
    assert facts.query_instruction == "" and facts.uses_token_type_ids and facts.pad_token_id == 0


def test_bge_large_zh_facts() -> None:
    facts = ModelFacts.from_checkpoint(
        model_config_dir("bge-large-zh-v1.5"), name="bge-large-zh-v1.5", source="BAAI/bge-large-zh-v1.5"
    )
    assert (facts.dim, facts.max_tokens, facts.pooling, facts.normalize) == (1024, 512, "cls", True)
    assert facts.query_instruction == BGE_ZH_INSTRUCTION
    assert facts.vocab_size == 21128


def test_bge_m3_facts_v6_pooling_format_and_xlmr_positions() -> None:
    facts = ModelFacts.from_checkpoint(model_config_dir("bge-m3"), name="bge-m3", source="BAAI/bge-m3")
    # 8194 positions minus XLM-R's padding offset of 2; sentence_bert_config says 8192 as well.
    assert (facts.dim, facts.max_tokens, facts.pooling) == (1024, 8192, "cls")
    assert facts.model_type == "xlm-roberta" and not facts.uses_token_type_ids and facts.pad_token_id == 1
    assert facts.query_instruction == ""  # bge-m3 needs no instruction


def test_instruction_found_from_the_source_id_when_the_name_differs() -> None:
    facts = ModelFacts.from_checkpoint(
        model_config_dir("bge-large-zh-v1.5"), name="zh", source="BAAI/bge-large-zh-v1.5"
    )
    assert facts.query_instruction == BGE_ZH_INSTRUCTION
    other = ModelFacts.from_checkpoint(model_config_dir("bge-large-zh-v1.5"), name="zh", source="/models/zh")
    assert other.query_instruction == ""


def test_parameters_round_trip() -> None:
    facts = ModelFacts.from_checkpoint(model_config_dir("bge-large-zh-v1.5"), name="bge-large-zh-v1.5", source="s")
    params = facts.to_parameters()
    assert all(isinstance(v, str) for v in params.values())
    assert ModelFacts.from_parameters(params) == facts
    assert ModelFacts.from_json(facts.to_json()) == facts


def test_unsupported_pooling_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(minilm_dir(), ckpt, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((ckpt / "1_Pooling/config.json").read_text())
    cfg["pooling_mode_mean_sqrt_len_tokens"] = True
    (ckpt / "1_Pooling/config.json").write_text(json.dumps(cfg))
    with pytest.raises(FactsError, match="unsupported pooling"):
        ModelFacts.from_checkpoint(ckpt, name="m", source="m")
