"""`bge-triton eval`: retrieval and STS quality measured against a live service.

The evaluation goes through what users get, the OpenAI-compatible proxy (`ProxyEmbedder`) or
Triton itself through the client library (`TritonEmbedder`), on the evaluation sets shipped in the
package or the user's own files (`datasets`), with plain numpy/scipy metrics (`metrics`); `runner` ties
them together, with a progress bar, a results table and an optional JSON report.

Names are imported from the submodules on first use, so that building the CLI's parser (which
reads `datasets.TASKS`) does not import scipy or the Triton client.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DATA_ENV": "datasets",
    "DEFAULT_TASKS": "datasets",
    "TASKS": "datasets",
    "DatasetError": "datasets",
    "RetrievalSet": "datasets",
    "StsSet": "datasets",
    "default_data_dir": "datasets",
    "load_retrieval_jsonl": "datasets",
    "load_sts_tsv": "datasets",
    "load_task": "datasets",
    "Embedder": "embedders",
    "EvalServiceError": "embedders",
    "ModelInfo": "embedders",
    "ProxyEmbedder": "embedders",
    "TritonEmbedder": "embedders",
    "cosine_rows": "metrics",
    "first_hit_ranks": "metrics",
    "mrr_at_k": "metrics",
    "recall_at_k": "metrics",
    "retrieval_metrics": "metrics",
    "spearman": "metrics",
    "top_k": "metrics",
    "EvalOptions": "runner",
    "EvalReport": "runner",
    "TaskResult": "runner",
    "evaluate": "runner",
    "format_table": "runner",
    "resolve_sts_input_type": "runner",
    "run_eval": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
