"""Triton Python-backend model: bge-m3's sparse / ColBERT post-processing, exactly as FlagEmbedding's `encode`.

Export copies this file to `<name>-sparse-post/1/model.py` and `<name>-colbert-post/1/model.py` (the config
parameter `head` says which); it needs only numpy, so it runs in the NGC tritonserver image as well as locally.
The linear parts of the heads run before it as ONNX graphs (`<name>-sparse-head`, `<name>-colbert-head`);
`sparse_rows` and `colbert_rows` are importable without Triton (the export parity check uses them).

head = "sparse" (FlagEmbedding's `_process_token_weights`)
  Inputs  INPUT_IDS      INT64 [batch, seq]   the tokenizer's ids (padding = the PAD id)
          TOKEN_WEIGHTS  FP32  [batch, seq]   relu(sparse_linear(h)) per token
  Outputs SPARSE_IDS     INT64 [batch, k]     per row the kept token ids in order of first occurrence, right-padded
                                              with -1; a token id is kept when its weight is > 0 and it is not one
                                              of `unused_token_ids` (CLS, EOS, PAD, UNK); its weight is its largest
          SPARSE_WEIGHTS FP32  [batch, k]     aligned with SPARSE_IDS, right-padded with 0
head = "colbert" (FlagEmbedding's `_process_colbert_vecs`)
  Inputs  COLBERT_VECS   FP32  [batch, seq, d] normalize(colbert_linear(h) * mask) at every position
          ATTENTION_MASK INT64 [batch, seq]
  Outputs COLBERT        FP32  [batch, m, d]  per row the vectors of positions 1 .. tokens-1 (all but CLS; EOS
                                              included), right-padded with zero vectors
          COLBERT_LENGTH INT64 [batch, 1]     tokens - 1: the real vectors of each row
k and m are the request's longest row (at least 1).
"""

from __future__ import annotations

import json

import numpy as np

SPARSE_ID_PADDING = -1


def sparse_row(
    input_ids: np.ndarray, token_weights: np.ndarray, unused_token_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One row's {token id: max weight} as aligned (ids, weights) arrays, ids in order of first occurrence."""
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    weights = np.asarray(token_weights, dtype=np.float32).reshape(-1)
    keep = (weights > 0) & ~np.isin(ids, unused_token_ids)
    ids, weights = ids[keep], weights[keep]
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    best = np.zeros(unique.shape[0], dtype=np.float32)
    np.maximum.at(best, inverse, weights)
    order = np.argsort(first, kind="stable")
    return unique[order], best[order]


def sparse_rows(
    input_ids: np.ndarray, token_weights: np.ndarray, unused_token_ids: list[int] | tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """[batch, seq] ids and weights -> SPARSE_IDS [batch, k] (-1 padded), SPARSE_WEIGHTS [batch, k] (0 padded)."""
    unused = np.asarray(list(unused_token_ids), dtype=np.int64)
    rows = [sparse_row(ids, weights, unused) for ids, weights in zip(input_ids, token_weights, strict=True)]
    width = max([1, *(len(ids) for ids, _ in rows)])
    out_ids = np.full((len(rows), width), SPARSE_ID_PADDING, dtype=np.int64)
    out_weights = np.zeros((len(rows), width), dtype=np.float32)
    for r, (ids, weights) in enumerate(rows):
        out_ids[r, : len(ids)] = ids
        out_weights[r, : len(weights)] = weights
    return out_ids, out_weights


def colbert_rows(colbert_vecs: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[batch, seq, d] per-position vectors -> COLBERT [batch, m, d] (zero padded), COLBERT_LENGTH [batch]."""
    vecs = np.asarray(colbert_vecs, dtype=np.float32)
    lengths = np.clip(np.asarray(attention_mask).reshape(len(vecs), -1).astype(np.int64).sum(axis=1) - 1, 0, None)
    width = max(1, int(lengths.max()) if len(lengths) else 0)
    out = np.zeros((vecs.shape[0], width, vecs.shape[2]), dtype=np.float32)
    for r, n in enumerate(lengths.tolist()):
        out[r, :n] = vecs[r, 1 : 1 + n]
    return out, lengths


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self._head = params.get("head", "")
        if self._head not in ("sparse", "colbert"):
            raise ValueError(f"parameter head must be 'sparse' or 'colbert', got {self._head!r}")
        self._unused = [int(i) for i in json.loads(params.get("unused_token_ids", "[]"))]

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses = []
        for request in requests:
            try:
                if self._head == "sparse":
                    ids, weights = sparse_rows(
                        pb.get_input_tensor_by_name(request, "INPUT_IDS").as_numpy(),
                        pb.get_input_tensor_by_name(request, "TOKEN_WEIGHTS").as_numpy(),
                        self._unused,
                    )
                    tensors = [pb.Tensor("SPARSE_IDS", ids), pb.Tensor("SPARSE_WEIGHTS", weights)]
                else:
                    vecs, lengths = colbert_rows(
                        pb.get_input_tensor_by_name(request, "COLBERT_VECS").as_numpy(),
                        pb.get_input_tensor_by_name(request, "ATTENTION_MASK").as_numpy(),
                    )
                    tensors = [pb.Tensor("COLBERT", vecs), pb.Tensor("COLBERT_LENGTH", lengths.reshape(-1, 1))]
                responses.append(pb.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # this request's error, not the stub's
                responses.append(pb.InferenceResponse(error=pb.TritonError(f"{self._head} post-processing: {exc}")))
        return responses
