"""The names of the Triton models an export writes for a model `NAME` (one place, light to import).

The client library and the proxy need them without the export's dependencies (torch, onnx): the proxy's slim
image installs neither. `bge_triton.export.repository` writes the models under these names.
"""

from __future__ import annotations


def model_names(name: str) -> dict[str, str]:
    """Every export's models: the text and token-id ensembles, their three steps, and `NAME-tokenize`."""
    return {
        "ensemble": name,
        "ids_ensemble": f"{name}-ids",
        "tokenizer": f"{name}-tokenizer",
        "encoder": f"{name}-encoder",
        "pooling": f"{name}-pooling",
        "tokenize": f"{name}-tokenize",
    }


def m3_model_names(name: str) -> dict[str, str]:
    """The models a bge-m3 export adds next to `model_names`."""
    return {
        "sparse_ensemble": f"{name}-sparse",
        "colbert_ensemble": f"{name}-colbert",
        "m3_ensemble": f"{name}-m3",
        "sparse_head": f"{name}-sparse-head",
        "colbert_head": f"{name}-colbert-head",
        "sparse_post": f"{name}-sparse-post",
        "colbert_post": f"{name}-colbert-post",
    }


def rerank_model_names(name: str) -> dict[str, str]:
    """A reranker export's models (export/rerank_repository.py): the ensemble, the pair tokenizer, the encoder."""
    return {"ensemble": name, "tokenizer": f"{name}-pair-tokenizer", "encoder": f"{name}-encoder"}
