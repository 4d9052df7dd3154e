"""A huge text is tokenized from a clipped prefix (issue 14 §4): the same ids as tokenizing it whole, for WordPiece
(English MiniLM, Chinese bge), and XLM-R Unigram, and a lower-bound count that still says "over the window"."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bge_triton.export.checkpoint import minilm_dir
from bge_triton.package_data import model_config_dir
from bge_triton.triton_models.tokenizer import TextTokenizer

ZH = "今天天气很好，我们去公园散步吧。北京是中华人民共和国的首都。机器学习 machine learning 深度学习。"
EN = "The quick brown fox jumps over the lazy dog; Triton serves ONNX models with dynamic batching. "


@pytest.fixture(scope="module")
def xlmr_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bge_triton.export.m3_checkpoint import write_xlmr_tokenizer

    path = tmp_path_factory.mktemp("xlmr") / "tokenizer.json"
    write_xlmr_tokenizer(path)
    return path


def _texts() -> dict[str, str]:
    rng = random.Random(0)
    words = EN.split()
    return {
        "zh": ZH * 400,
        "en": EN * 300,
        "mixed": "".join(rng.choice([ZH, EN, "😀 ", "\n\t", "１２３ "]) for _ in range(600)),
        "spaces then words": " " * 20_000 + EN * 100,  # the prefix holds no token: tokenized whole
        "one long word": "x" * 10_000 + " " + EN * 50,
        "random words": " ".join(rng.choice(words) for _ in range(4_000)),
    }


@pytest.mark.parametrize("which", ["minilm", "bge-zh", "xlmr"])
def test_clipped_ids_equal_whole_text_ids(which: str, xlmr_tokenizer: Path) -> None:
    path = {
        "minilm": minilm_dir() / "tokenizer.json",
        "bge-zh": model_config_dir("bge-large-zh-v1.5") / "tokenizer.json",
        "xlmr": xlmr_tokenizer,
    }[which]
    clipping = TextTokenizer(path, max_tokens=128, pad_token_id=0)
    whole = TextTokenizer(path, max_tokens=128, pad_token_id=0)
    whole.clip_chars = 10**9  # never clips
    texts = _texts()
    names = list(texts)
    batch = [*texts.values(), "short text 短文本"]
    clipped = clipping.encode(batch)
    reference = whole.encode(batch)
    np.testing.assert_array_equal(clipped.input_ids, reference.input_ids)
    np.testing.assert_array_equal(clipped.attention_mask, reference.attention_mask)
    np.testing.assert_array_equal(clipped.token_count, reference.token_count)
    assert (clipped.token_count[:-1] == 128).all()
    # Counts: over the window either way; a clipped text's count is its prefix's (far below the whole count).
    assert (clipped.full_token_count[:-1] > 128).all()
    assert clipped.full_token_count[-1] == reference.full_token_count[-1]
    lower = {n for n, c, r in zip(names, clipped.full_token_count, reference.full_token_count, strict=False) if c < r}
    assert {"zh", "en", "random words"} <= lower, lower
    assert "spaces then words" not in lower  # tokenized whole: no token in its first 2 x clip_chars
