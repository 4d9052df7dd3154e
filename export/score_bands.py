"""What a cosine means for one model: its scores on human-rated STS pairs, measured at export.

Cosine scales differ between models (multilingual-e5-small scores unrelated Chinese sentences around 0.84, MiniLM
around 0.1), so fixed words ("very similar" at 0.75) mislead. At export, the exported pipeline embeds a fixed
sample of STS-B pairs per language (Chinese STS-B test, English STS benchmark test; shipped in the package) with
the passage instruction, as `/v1/embeddings` does by default, and records the cosine quartiles of three bands of
gold scores (0-5): `unrelated` [0, 2), `related` [2, 4), `paraphrase` [4, 5]. The thresholds between labels lie
halfway between neighbouring bands' medians (`ordered` is false when the medians do not rise with the gold score,
as for a random-weight model: then no words fit); the web page labels a score with them and starts its
near-duplicate threshold at `paraphrase`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bge_triton.evaluation.datasets import load_sts_tsv
from bge_triton.package_data import eval_data_dir

# label, lowest gold score, highest gold score (exclusive except for the last band)
BANDS: tuple[tuple[str, float, float], ...] = (("unrelated", 0.0, 2.0), ("related", 2.0, 4.0), ("paraphrase", 4.0, 5.0))
# language -> (shipped file, split)
STS_SETS: dict[str, tuple[str, str | None]] = {
    "zh": ("zh-stsb-test.tsv", None),
    "en": ("en-stsbenchmark.tsv.gz", "test"),
}
PAIRS_PER_BAND = 34  # ~100 pairs per language: medians within about 0.01, a few seconds for a small model


@dataclass(frozen=True)
class StsSample:
    language: str
    source: str
    first: list[str]
    second: list[str]
    gold: np.ndarray


def sample_pairs(language: str, per_band: int = PAIRS_PER_BAND) -> StsSample:
    """`per_band` pairs of each gold band, spread evenly over the file (its genres come in blocks)."""
    filename, split = STS_SETS[language]
    sts = load_sts_tsv(eval_data_dir() / filename, split=split)
    gold = np.asarray(sts.scores, dtype=np.float64)
    chosen: list[int] = []
    for _, low, high in BANDS:
        in_band = np.flatnonzero((gold >= low) & ((gold < high) if high < 5.0 else (gold <= high)))
        picks = np.linspace(0, len(in_band) - 1, num=min(per_band, len(in_band))).round().astype(int)
        chosen.extend(int(in_band[i]) for i in np.unique(picks))
    return StsSample(
        language, filename, [sts.sentences1[i] for i in chosen], [sts.sentences2[i] for i in chosen], gold[chosen]
    )


def measure(embed: Callable[[list[str]], np.ndarray], instruction: str, input_type: str = "passage") -> dict[str, Any]:
    """Score bands per language: `embed` returns unit-length vectors of texts (the instruction is added here)."""
    languages: dict[str, Any] = {}
    for language in STS_SETS:
        sample = sample_pairs(language)
        texts = [instruction + t for t in sample.first + sample.second]
        order = np.argsort([len(t) for t in texts], kind="stable")  # batches of similar lengths pad less
        batches = [embed([texts[i] for i in order[start : start + 32]]) for start in range(0, len(texts), 32)]
        vectors = np.concatenate(batches)[np.argsort(order)]
        a, b = vectors[: len(sample.first)], vectors[len(sample.first) :]
        cosines = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        bands = []
        for label, low, high in BANDS:
            in_band = (sample.gold >= low) & ((sample.gold < high) if high < 5.0 else (sample.gold <= high))
            p25, median, p75 = np.percentile(cosines[in_band], [25, 50, 75])
            bands.append({"label": label, "gold": [low, high], "pairs": int(in_band.sum()),
                          "p25": round(float(p25), 4), "median": round(float(median), 4),
                          "p75": round(float(p75), 4)})  # fmt: skip
        thresholds = {
            upper["label"]: round((lower["median"] + upper["median"]) / 2, 4)
            for lower, upper in itertools.pairwise(bands)
        }
        medians = [band["median"] for band in bands]
        languages[language] = {"source": sample.source, "pairs": len(sample.gold), "bands": bands,
                               "thresholds": thresholds,
                               "ordered": all(x < y for x, y in itertools.pairwise(medians))}  # fmt: skip
    return {"input_type": input_type, "languages": languages}


def to_text(bands: dict[str, Any]) -> str:
    """The compact JSON stored in the model facts (a Triton config parameter is a string)."""
    return json.dumps(bands, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
