"""The torch engine (issue 15): the encoder step as a transformers model in the Python backend, batched by the
same token-budget runner as onnxruntime, equal to the ONNX encoder and the PyTorch reference."""

from __future__ import annotations

import numpy as np

from bge_triton.export.checkpoint import minilm_dir
from bge_triton.export.exporter import ExportResult
from bge_triton.export.onnx_export import encoder_input_names
from bge_triton.triton_models.onnx_runner import PaddedOnnxRunner
from bge_triton.triton_models.tokenizer import TextTokenizer
from bge_triton.triton_models.torch_runner import torch_runner

TEXTS = ["short", "a somewhat longer sentence about deploying embedding models", "今天天气很好", "word " * 300]


def test_torch_runner_equals_the_onnx_encoder(exported: ExportResult) -> None:
    repo = exported.ensemble_dir.parent
    name = exported.facts.name
    tokenizer = TextTokenizer(repo / f"{name}-tokenizer/1/tokenizer.json", exported.facts.max_tokens, 0)
    names = encoder_input_names(exported.facts)
    # Three requests of different padded widths, as Triton's ragged batch hands them over.
    batches = [tokenizer.encode(TEXTS[:2]), tokenizer.encode(TEXTS[2:3]), tokenizer.encode(TEXTS[3:])]
    feeds = [
        {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "token_type_ids": b.token_type_ids}
        for b in batches
    ]
    feeds = [{n: f[n] for n in names} for f in feeds]
    onnx = PaddedOnnxRunner(repo / f"{name}-encoder/1/model.onnx", max_batch_tokens=512)
    torch = torch_runner(minilm_dir(), names, max_batch_tokens=512, pad_values={"input_ids": 0})
    expected = onnx.run(feeds)
    got = torch.run(feeds)
    assert torch.last_sub_batches == onnx.last_sub_batches and len(torch.last_sub_batches) > 1
    for want, have, batch in zip(expected, got, batches, strict=True):
        assert have["last_hidden_state"].shape == want["last_hidden_state"].shape
        mask = batch.attention_mask.astype(bool)
        diff = np.abs(have["last_hidden_state"][mask] - want["last_hidden_state"][mask]).max()
        assert diff < 1e-3, diff
