"""bge-m3's sparse and ColBERT heads: loading, the PyTorch maths, and their ONNX graphs.

FlagEmbedding's `BGEM3FlagModel` (`FlagEmbedding/finetune/embedder/encoder_only/m3/modeling.py`) computes, from
the encoder's `last_hidden_state` h:
- sparse:  token_weights = relu(sparse_linear(h)).squeeze(-1), one weight per token; `encode` then keeps, per
  token id, the largest positive weight, dropping the CLS, EOS, PAD and UNK ids (`_process_token_weights`);
- ColBERT: normalize(colbert_linear(h[:, 1:]) * attention_mask[:, 1:]), and `encode` keeps the first
  `tokens - 1` vectors (every token after CLS, EOS included; `_process_colbert_vecs`).

The ONNX graphs here are the linear parts (they run on the encoder's device: onnxruntime in the Python backend
locally, Triton's onnxruntime backend in the container); the per-row aggregation that FlagEmbedding does in
Python runs in numpy in `bge_triton/triton_models/m3_heads.py`. To keep the sequence axis aligned with the
encoder's (what the padded ONNX runner slices), the ColBERT graph computes a vector for every position, CLS
included, and the post-processing step drops position 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bge_triton.model_facts import COLBERT_LINEAR_FILE, SPARSE_LINEAR_FILE, ModelFacts

from .model_configs import M3HeadFiles
from .onnx_export import SEQUENCE, export_module, pin_output_dims

# The ids FlagEmbedding leaves out of the lexical weights: tokenizer.special_tokens_map's entries for these.
UNUSED_SPECIAL_TOKENS: tuple[str, ...] = ("cls_token", "eos_token", "pad_token", "unk_token")


@dataclass
class M3Heads:
    """The two head layers of a bge-m3 checkpoint, loaded as FlagEmbedding loads them."""

    sparse_linear: nn.Linear  # hidden -> 1
    colbert_linear: nn.Linear  # hidden -> colbert dim (bge-m3: hidden)

    @property
    def colbert_dim(self) -> int:
        return int(self.colbert_linear.out_features)


def load_m3_heads(checkpoint: Path) -> M3Heads:
    """`sparse_linear.pt` and `colbert_linear.pt` (torch Linear state dicts), in float32."""
    checkpoint = Path(checkpoint)
    states = {}
    for name in (SPARSE_LINEAR_FILE, COLBERT_LINEAR_FILE):
        path = checkpoint / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: not a bge-m3 (M3 layout) checkpoint")
        states[name] = torch.load(path, map_location="cpu", weights_only=True)
    return M3Heads(_linear(states[SPARSE_LINEAR_FILE]), _linear(states[COLBERT_LINEAR_FILE]))


def _linear(state: dict[str, torch.Tensor]) -> nn.Linear:
    weight = state["weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    layer.load_state_dict({k: v.float() for k, v in state.items()})
    return layer.eval()


class SparseHead(nn.Module):
    """relu(sparse_linear(h)) per token, as FlagEmbedding's `_sparse_embedding(..., return_embedding=False)`."""

    def __init__(self, sparse_linear: nn.Linear):
        super().__init__()
        self.sparse_linear = sparse_linear

    def forward(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.sparse_linear(last_hidden_state.float())).squeeze(-1)


class ColbertHead(nn.Module):
    """normalize(colbert_linear(h) * mask) at every position (FlagEmbedding's `_colbert_embedding` + normalize
    is this from position 1 on; the post-processing step drops position 0)."""

    def __init__(self, colbert_linear: nn.Linear):
        super().__init__()
        self.colbert_linear = colbert_linear

    def forward(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vectors = self.colbert_linear(last_hidden_state.float())
        vectors = vectors * attention_mask.unsqueeze(-1).to(vectors.dtype)
        return nn.functional.normalize(vectors, dim=-1)


def export_m3_heads(heads: M3Heads, facts: ModelFacts, out_dir: Path, unused_token_ids: tuple[int, ...]) -> M3HeadFiles:
    out_dir = Path(out_dir)
    hidden = torch.randn(2, 16, facts.dim)
    mask = torch.ones(2, 16, dtype=torch.int64)
    sparse = out_dir / "sparse_head.onnx"
    export_module(
        SparseHead(heads.sparse_linear).eval(),
        (hidden,),
        sparse,
        ["last_hidden_state"],
        ["token_weights"],
        {"last_hidden_state": {0: "batch", 1: SEQUENCE}, "token_weights": {0: "batch", 1: SEQUENCE}},
    )
    colbert = out_dir / "colbert_head.onnx"
    export_module(
        ColbertHead(heads.colbert_linear).eval(),
        (hidden, mask),
        colbert,
        ["last_hidden_state", "attention_mask"],
        ["colbert_vecs"],
        {
            "last_hidden_state": {0: "batch", 1: SEQUENCE},
            "attention_mask": {0: "batch", 1: SEQUENCE},
            "colbert_vecs": {0: "batch", 1: SEQUENCE},
        },
    )
    # static sizes as the configs declare them (the normalisation leaves ColBERT's last dim symbolic)
    pin_output_dims(sparse, "token_weights", ["batch", SEQUENCE])
    pin_output_dims(colbert, "colbert_vecs", ["batch", SEQUENCE, heads.colbert_dim])
    return M3HeadFiles(sparse, colbert, heads.colbert_dim, tuple(unused_token_ids))


def unused_token_ids(checkpoint: Path, tokenizer_json: Path) -> tuple[int, ...]:
    """The ids of the CLS, EOS, PAD and UNK tokens, as FlagEmbedding finds them (`special_tokens_map`).

    Token strings come from `special_tokens_map.json`, else `tokenizer_config.json` (strings, or
    `{"content": ...}` objects); ids from the tokenizer's own vocabulary."""
    from tokenizers import Tokenizer

    checkpoint = Path(checkpoint)
    tokens: dict[str, str] = {}
    for file_name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins, as in transformers
        path = checkpoint / file_name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in UNUSED_SPECIAL_TOKENS:
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                tokens[key] = value
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    ids: list[int] = []
    for key in UNUSED_SPECIAL_TOKENS:
        if key not in tokens:
            continue
        token_id = tokenizer.token_to_id(tokens[key])
        if token_id is None:
            raise ValueError(f"{key} {tokens[key]!r} is not in the vocabulary of {tokenizer_json}")
        if token_id not in ids:
            ids.append(int(token_id))
    if not ids:
        raise ValueError(f"{checkpoint} names none of {', '.join(UNUSED_SPECIAL_TOKENS)} in its tokenizer files")
    return tuple(ids)
