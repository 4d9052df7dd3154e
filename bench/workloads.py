"""Benchmark inputs defined by token length, built offline from the STS-B sentences shipped in the package.

Chinese text for Chinese-vocabulary models (bge-zh), English for the others (MiniLM). Each text
is cut at a token boundary so that, with the model's special tokens, it has the workload's
length (capped at the model's window).
"""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

from tokenizers import Tokenizer

from bge_triton.package_data import eval_data_dir

# workload -> tokens per text (None: the mix below)
WORKLOADS: dict[str, int | None] = {
    "short": 16, "sentence": 64, "medium": 128, "passage": 256, "full": 512, "long": 8192, "mix": None,
}  # fmt: skip
MIX: tuple[tuple[int, float], ...] = ((16, 0.40), (64, 0.35), (256, 0.20), (512, 0.05))  # RAG-ish traffic


def corpus(language: str) -> list[str]:
    data = eval_data_dir()
    if language == "zh":
        with open(data / "zh-stsb-test.tsv", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [s for row in rows for s in row[:2] if s.strip()]
    with gzip.open(data / "en-stsbenchmark.tsv.gz", "rt", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0]
    cols = [header.index("sentence1"), header.index("sentence2")] if "sentence1" in header else [-3, -2]
    return [row[c] for row in rows[1:] for c in cols if len(row) > max(cols) and row[c].strip()]


def language_of(tokenizer: Tokenizer) -> str:
    """zh when the vocabulary is mostly CJK-capable (bge-zh's 21128 ids), else en."""
    vocab = tokenizer.get_vocab()
    return "zh" if sum(1 for t in vocab if any("\u4e00" <= ch <= "\u9fff" for ch in t)) > 5000 else "en"


def make_texts(tokenizer_json: Path, workload: str, n: int, max_tokens: int, seed: int = 0) -> list[str]:
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    sentences = corpus(language_of(tokenizer))
    specials = len(tokenizer.encode("").ids)
    rng = random.Random(seed)
    lengths = _lengths(workload, n, rng)
    texts = []
    for length in lengths:
        target = max(1, min(length, max_tokens) - specials)
        text = ""
        while len(tokenizer.encode(text, add_special_tokens=False).ids) < target:
            text += (" " if text else "") + rng.choice(sentences)
        enc = tokenizer.encode(text, add_special_tokens=False)
        texts.append(text[: enc.offsets[target - 1][1]])
    return texts


def _lengths(workload: str, n: int, rng: random.Random) -> list[int]:
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r} ({', '.join(WORKLOADS)})")
    fixed = WORKLOADS[workload]
    if fixed is not None:
        return [fixed] * n
    sizes, weights = zip(*MIX, strict=True)
    return rng.choices(sizes, weights=weights, k=n)
