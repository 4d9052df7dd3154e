"""Files shipped inside the package (bge_triton/data, see its NOTICE.md): evaluation sets and model configs.

Everything the CLI and the tests read besides the Python code itself comes from here, so a fresh clone or a plain
`pip install` works without any folder beside it.
"""

from __future__ import annotations

from pathlib import Path

DATA_ROOT = Path(__file__).resolve().parent / "data"


def eval_data_dir() -> Path:
    """The evaluation sets: zh-stsb-test.tsv, en-stsbenchmark.tsv.gz, zh-retrieval-bge-finetune.jsonl."""
    return DATA_ROOT / "eval"


def model_config_dir(name: str) -> Path:
    """A model's config + tokenizer files (no weights): `bge-large-zh-v1.5` or `bge-m3`."""
    path = DATA_ROOT / "models" / name
    if not (path / "config.json").is_file():
        shipped = sorted(p.name for p in (DATA_ROOT / "models").iterdir() if p.is_dir())
        raise FileNotFoundError(f"no shipped config for {name!r} (shipped: {', '.join(shipped)})")
    return path
