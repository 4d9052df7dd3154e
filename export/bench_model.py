"""A randomly initialised checkpoint with a real model's exact config and tokenizer (same FLOPs).

Used where the real weights cannot be downloaded: `bge-triton make-bench-model` builds
bge-large-zh-v1.5's shape from its config.json and tokenizer (shipped in the package:
bge_triton/data/models/bge-large-zh-v1.5)
and saves a normal Hugging Face checkpoint that goes through the very same export path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Files copied from the config directory so the checkpoint tokenizes and pools like the real one.
_COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


def make_bench_model(config_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    config_dir, out = Path(config_dir), Path(out)
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(f"{config_dir}/config.json not found (expected a model's config directory)")
    config = AutoConfig.from_pretrained(str(config_dir))
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in _COPIED:
        if (config_dir / name).is_file():
            shutil.copyfile(config_dir / name, out / name)
    for pooling in config_dir.glob("*_Pooling"):
        shutil.copytree(pooling, out / pooling.name, dirs_exist_ok=True)
    return out
