"""Exported pooling and head graphs declare the inputs and static output sizes their configs declare, as Triton's
onnxruntime backend needs (it compares input counts and output dims exactly).

The backend compares a graph's declared output dims with config.pbtxt exactly: last-token pooling with
normalisation used to declare `[batch, Divembedding_dim_1]` against the config's `[batch, dim]` and failed to load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from torch import nn

from bge_triton.export.m3_heads import M3Heads, export_m3_heads
from bge_triton.export.onnx_export import export_pooling
from bge_triton.model_facts import ModelFacts

DIM = 32


def _facts(pooling: str, normalize: bool) -> ModelFacts:
    return ModelFacts(
        name="x", source="x", model_type="bert", dim=DIM, max_tokens=64, pooling=pooling,  # type: ignore[arg-type]
        normalize=normalize, query_instruction="", passage_instruction="", pad_token_id=0,
        uses_token_type_ids=False, vocab_size=100,
    )  # fmt: skip


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "lasttoken"])
def test_pooling_graph_declares_static_dim(tmp_path: Path, pooling: str, normalize: bool) -> None:
    graph = export_pooling(_facts(pooling, normalize), tmp_path / "pooling.onnx")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape == ["batch", DIM]
    # both inputs the config declares, CLS included (the backend checks the count: "expects 2 inputs")
    assert [(i.name, i.shape) for i in session.get_inputs()] == [
        ("last_hidden_state", ["batch", "sequence", DIM]),
        ("attention_mask", ["batch", "sequence"]),
    ]
    # the pinned shape is what the graph computes: 3 rows of 5 tokens, the last row with 2 real tokens
    hidden = np.random.default_rng(0).standard_normal((3, 5, DIM)).astype(np.float32)
    mask = np.array([[1] * 5, [1] * 5, [1, 1, 0, 0, 0]], dtype=np.int64)
    (out,) = session.run(None, {"last_hidden_state": hidden, "attention_mask": mask})
    assert out.shape == (3, DIM)
    if pooling == "lasttoken":
        expected = hidden[2, 1] / (np.linalg.norm(hidden[2, 1]) if normalize else 1.0)
        np.testing.assert_allclose(out[2], expected, atol=1e-6)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_m3_head_graphs_declare_static_dims(tmp_path: Path) -> None:
    heads = M3Heads(colbert_linear=nn.Linear(DIM, 24), sparse_linear=nn.Linear(DIM, 1))
    files = export_m3_heads(heads, _facts("cls", True), tmp_path, (0, 1, 2, 3))
    sparse = ort.InferenceSession(str(files.sparse_onnx), providers=["CPUExecutionProvider"])
    colbert = ort.InferenceSession(str(files.colbert_onnx), providers=["CPUExecutionProvider"])
    assert sparse.get_outputs()[0].shape == ["batch", "sequence"]
    assert colbert.get_outputs()[0].shape == ["batch", "sequence", 24]
    hidden = np.ones((2, 7, DIM), dtype=np.float32)
    (vecs,) = colbert.run(None, {"last_hidden_state": hidden, "attention_mask": np.ones((2, 7), dtype=np.int64)})
    assert vecs.shape == (2, 7, 24)
